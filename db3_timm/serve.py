"""Serve a timm classifier as a label-only teacher over HTTP (Open Inference Protocol v2).

:func:`create_app` returns a Starlette ASGI app (run it with uvicorn, or ``db3 serve``) that
speaks the KServe / Triton "Open Inference Protocol" v2 REST API, restricted to labels:

* ``GET /v2/health/live``, ``GET /v2/health/ready``: ``200`` when serving (no auth).
* ``GET /v2/models/{name}`` (and ``/v2/models/{name}/ready``): metadata::

      {"name": NAME, "versions": ["1"], "platform": "pytorch_timm",
       "inputs":  [{"name": "input", "datatype": "FP32", "shape": [-1, C, H, W]}],
       "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
       "parameters": {"num_classes": K, "label_only": true, "max_batch_size": B}}

* ``POST /v2/models/{name}/infer``::

      {"inputs": [{"name": "input", "shape": [N, C, H, W], "datatype": "FP32", "data": [... N*C*H*W floats ...]}]}
      -> {"model_name": NAME, "model_version": "1", "outputs":
          [{"name": "label", "shape": [N], "datatype": "INT64", "data": [... N ints ...]}]}

  Pixels are in ``[0, 1]`` (clamped); the server applies the model's own mean/std. ``H, W``
  must equal the model's input size (clients resize). Only the ``label`` output exists: a
  request asking for any other output (logits, probabilities, Triton's ``classification``
  top-k) is refused with ``400``, and ``parameters`` never make the server return scores.

Errors are ``{"error": MESSAGE}`` with: ``401`` no bearer token, ``403`` wrong token (compared
with :func:`hmac.compare_digest`), ``404`` unknown model, ``413`` body over ``max_request_bytes``,
``400`` malformed JSON / tensor, wrong shape, datatype, non-finite values or a batch over
``max_batch_size``, ``429`` (with ``Retry-After`` seconds) when the per-client query quota of the
current window is spent. The quota counts images (one query each) per bearer token (per client
address without auth) in fixed windows of ``quota_window`` seconds; a refused request spends
nothing. Inference runs in a worker thread under one lock with ``torch.inference_mode``, so
concurrent requests are safe and the event loop keeps answering health checks.
"""
from __future__ import annotations

import hmac
import json
import math
import os
import threading
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .oracle import LabelPredictor

__all__ = ["create_app", "create_app_from_timm", "load_timm_teacher"]

_VERSION = "1"


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Quota:
    """Fixed-window query counter per client key; thread-safe."""

    def __init__(self, quota: int, window: float):
        self.quota, self.window = int(quota), float(window)
        self._lock = threading.Lock()
        self._used: Dict[str, Tuple[float, int]] = {}

    def take(self, key: str, n: int) -> None:
        if n > self.quota:
            raise _HTTPError(400, f"batch of {n} images exceeds the query quota of {self.quota} per "
                                  f"{self.window:g} s window; send smaller batches")
        now = time.monotonic()
        with self._lock:
            start, used = self._used.get(key, (now, 0))
            if now - start >= self.window:
                start, used = now, 0
            if used + n > self.quota:
                wait = max(1, math.ceil(start + self.window - now))
                raise _HTTPError(429, f"query quota exceeded: {used} of {self.quota} queries used in this "
                                      f"{self.window:g} s window, the request needs {n}; retry in {wait} s",
                                 {"Retry-After": str(wait)})
            self._used[key] = (start, used + n)

    def refund(self, key: str, n: int) -> None:
        with self._lock:
            if key in self._used:
                start, used = self._used[key]
                self._used[key] = (start, max(0, used - n))


def create_app(
    model: nn.Module,
    *,
    model_name: str,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    num_classes: Optional[int] = None,
    token: Optional[str] = None,
    max_batch_size: int = 1024,
    max_request_bytes: Optional[int] = None,
    quota: Optional[int] = None,
    quota_window: float = 60.0,
) -> Any:
    """Builds an ASGI app answering only the argmax label of ``model`` (Open Inference Protocol v2).

    Args:
        model: classifier mapping normalised images to logits; put it on its device first.
        model_name: the ``{name}`` in ``/v2/models/{name}/...``.
        mean, std, input_size: the model's preprocessing (pixel-space mean/std) and ``(C, H, W)``.
        num_classes: advertised in the metadata (default: ``model.num_classes``).
        token: bearer token required on model routes (``None``: no auth; health routes are open).
        max_batch_size: largest ``N`` accepted in one request (``400`` above it).
        max_request_bytes: largest request body (``413`` above it); default fits a full batch of
            JSON floats (24 bytes per value) plus 64 KiB.
        quota: optional images per client per ``quota_window`` seconds (``429`` + ``Retry-After`` beyond).
        quota_window: length of a quota window in seconds.

    Returns:
        A :class:`starlette.applications.Starlette` app.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) positive integers, got {input_size!r}")
    if int(max_batch_size) < 1:
        raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if quota is not None and (int(quota) < 1 or quota_window <= 0):
        raise ValueError(f"quota must be >= 1 and quota_window > 0, got {quota!r}, {quota_window!r}")
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None")
    max_batch_size = int(max_batch_size)
    per_image = int(np.prod(input_size))
    if max_request_bytes is None:
        max_request_bytes = 24 * max_batch_size * per_image + 65536
    predictor = LabelPredictor(model, mean, std, input_size)
    device = predictor.device
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    lock = threading.Lock()
    quotas = _Quota(quota, quota_window) if quota is not None else None
    token_bytes = None if token is None else token.encode()

    metadata = {
        "name": model_name,
        "versions": [_VERSION],
        "platform": "pytorch_timm",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *input_size]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "parameters": {"num_classes": num_classes, "label_only": True, "max_batch_size": max_batch_size},
    }

    def error(err: _HTTPError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    def authorize(request: Request) -> str:
        """Checks the bearer token; returns the quota key."""
        if token_bytes is None:
            return request.client.host if request.client else "anonymous"
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _HTTPError(401, "missing bearer token (send 'Authorization: Bearer TOKEN')",
                             {"WWW-Authenticate": 'Bearer realm="db3"'})
        if not hmac.compare_digest(given.strip().encode(), token_bytes):
            raise _HTTPError(403, "invalid token")
        return "token"

    def check_model(request: Request) -> None:
        name = request.path_params["name"]
        if name != model_name:
            raise _HTTPError(404, f"unknown model {name!r}; this server serves {model_name!r}")

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    async def server_meta(request: Request) -> JSONResponse:
        return JSONResponse({"name": "db3-timm", "version": _VERSION, "extensions": []})

    def refused(request: Request) -> Optional[JSONResponse]:
        """The error response for a request that fails auth or names another model, else ``None``."""
        try:
            authorize(request)
            check_model(request)
        except _HTTPError as err:
            return error(err)
        return None

    async def model_meta(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse(metadata)

    async def model_ready(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse({"name": model_name, "ready": True})

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_request_bytes:
                    raise _HTTPError(413, f"request body of {int(declared)} bytes exceeds the limit of "
                                          f"{max_request_bytes} bytes")
            except ValueError:
                raise _HTTPError(400, "invalid Content-Length header") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise _HTTPError(413, f"request body exceeds the limit of {max_request_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def decode(body: bytes) -> torch.Tensor:
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise _HTTPError(400, f"request body is not valid JSON: {err}") from None
        if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
            raise _HTTPError(400, "expected a JSON object with 'inputs': a list holding one tensor named 'input'")
        for out in req.get("outputs") or []:
            name = out.get("name") if isinstance(out, dict) else out
            if name != "label":
                raise _HTTPError(400, f"unknown output {name!r}: this label-only endpoint answers only 'label'")
        tensor = req["inputs"][0]
        if not isinstance(tensor, dict):
            raise _HTTPError(400, "each input must be an object with name, shape, datatype and data")
        if tensor.get("name", "input") != "input":
            raise _HTTPError(400, f"unknown input {tensor.get('name')!r}; expected 'input'")
        if tensor.get("datatype") != "FP32":
            raise _HTTPError(400, f"input datatype must be 'FP32', got {tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if (not isinstance(shape, list) or len(shape) != 4
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise _HTTPError(400, f"input shape must be [N, C, H, W] integers, got {shape!r}")
        n = shape[0]
        if n < 1:
            raise _HTTPError(400, f"batch size must be at least 1, got {n}")
        if n > max_batch_size:
            raise _HTTPError(400, f"batch of {n} images exceeds max_batch_size {max_batch_size}; split the request")
        if tuple(shape[1:]) != input_size:
            raise _HTTPError(400, f"input shape {shape} does not match the model input [N, {input_size[0]}, "
                                  f"{input_size[1]}, {input_size[2]}] (resize on the client)")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise _HTTPError(400, "input 'data' must be a JSON array of numbers")
        try:
            arr = np.asarray(data, dtype=np.float32)
        except (ValueError, TypeError):
            raise _HTTPError(400, "input 'data' must hold only numbers") from None
        if arr.size != n * per_image:
            raise _HTTPError(400, f"input 'data' holds {arr.size} values, shape {shape} needs {n * per_image}")
        if not np.isfinite(arr).all():
            raise _HTTPError(400, "input 'data' contains NaN or infinity; expected pixel values in [0, 1]")
        return torch.from_numpy(arr.reshape(shape))

    def predict(x: torch.Tensor) -> list:
        with lock, torch.inference_mode():
            labels = predictor(x.to(device))
        return labels.cpu().tolist()

    async def infer(request: Request) -> JSONResponse:
        taken = None
        try:
            key = authorize(request)
            check_model(request)
            body = await read_body(request)
            x = await run_in_threadpool(decode, body)
            n = x.shape[0]
            if quotas is not None:
                quotas.take(key, n)
                taken = (key, n)
            labels = await run_in_threadpool(predict, x)
        except _HTTPError as err:
            return error(err)
        except Exception as err:  # the model failed: report, refund, keep serving
            if taken is not None:
                quotas.refund(*taken)
            return JSONResponse({"error": f"inference failed: {type(err).__name__}"}, status_code=500)
        return JSONResponse({
            "model_name": model_name,
            "model_version": _VERSION,
            "outputs": [{"name": "label", "shape": [len(labels)], "datatype": "INT64", "data": labels}],
        })

    routes = [
        Route("/v2", server_meta, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_meta, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.model_name = model_name
    return app


def load_timm_teacher(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    *,
    num_classes: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Builds a timm model (name, ``local-dir:PATH`` or ``hf-hub:ID``) with :func:`~db3_timm.oracle.create_timm_model`.

    Returns:
        ``(model, data_config)`` with timm's resolved ``mean``, ``std`` and ``input_size``.
    """
    from timm.data import resolve_model_data_config

    from .oracle import create_timm_model

    model = create_timm_model(name, checkpoint, num_classes=num_classes, device=device)
    return model, resolve_model_data_config(model)


def create_app_from_timm(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    *,
    num_classes: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    model_name: Optional[str] = None,
    **app_kwargs: Any,
) -> Any:
    """:func:`create_app` for a timm model spec; ``model_name`` defaults to the spec's last path part."""
    model, cfg = load_timm_teacher(name, checkpoint, num_classes=num_classes, device=device)
    if model_name is None:
        model_name = name.split(":", 1)[-1].rstrip("/").replace("\\", "/").split("/")[-1] or "teacher"
    return create_app(model, model_name=model_name, mean=cfg["mean"], std=cfg["std"],
                      input_size=cfg["input_size"], num_classes=getattr(model, "num_classes", None), **app_kwargs)
