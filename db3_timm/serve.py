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
``400`` malformed JSON (also nested too deeply, or numbers too long or too large) / tensor, wrong
shape, datatype, non-finite values or a batch over ``max_batch_size``, ``429`` (with ``Retry-After``
seconds) when the per-client query quota of the current window is spent. A malformed request is
never a ``5xx`` (clients retry those); ``500`` means the model itself failed. Messages quote at most
80 characters of any value the client sent. The quota counts images (one query each) per bearer
token (per client address without auth) in fixed windows of ``quota_window`` seconds (finite,
``> 0``); a refused request spends nothing. Inference runs in a worker thread under one lock with
``torch.inference_mode``, so concurrent requests are safe and the event loop keeps answering
health checks.

Inside, :func:`create_app` validates its arguments and wires routes to a ``_LabelServer``, which
holds the settings, predictor, lock and quota with one method per concern (auth, body reading,
JSON decoding and tensor validation, prediction, one handler per route).
"""
from __future__ import annotations

import hmac
import json
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ._checks import check_class_names
from .oracle import LabelPredictor, timm_class_names

if TYPE_CHECKING:  # starlette is the optional 'serve' extra: imported where used
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

__all__ = ["create_app", "create_app_from_timm", "load_timm_teacher"]

_VERSION = "1"
_MAX_ECHO = 80  # characters of a client-sent value quoted back in an error message


def _clip(value: Any) -> str:
    """``repr(value)``, cut to :data:`_MAX_ECHO` characters: errors quote client input, never all of it."""
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits() has no repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO - 3] + "..."


class _HTTPError(Exception):
    """A request refused with ``status`` and ``{"error": message}`` (and optional response headers)."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _respond(content: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    """A JSON response (starlette is imported here so this module imports without the 'serve' extra)."""
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status, headers=headers)


def _answer(header: Dict[str, Any], blob: Optional[bytes]) -> Any:
    """An infer answer: JSON, or the JSON header followed by binary tensor data (the OIP binary extension)."""
    if blob is None:
        return _respond(header)
    from starlette.responses import Response

    head = json.dumps(header).encode()
    return Response(head + blob, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def _error(err: _HTTPError) -> JSONResponse:
    """The ``{"error": MESSAGE}`` response for ``err``, with its status and headers."""
    return _respond({"error": err.message}, err.status, err.headers)


class _Quota:
    """Fixed-window query counter per client key; thread-safe."""

    def __init__(self, quota: int, window: float):
        self.quota, self.window = int(quota), float(window)
        self._lock = threading.Lock()
        self._used: Dict[str, Tuple[float, int]] = {}

    def take(self, key: str, n: int) -> None:
        """Spends ``n`` queries of ``key``'s window; raises ``400`` (``n`` over the quota) or ``429``."""
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
        """Gives back ``n`` queries spent by ``key`` (for a request the model failed to answer)."""
        with self._lock:
            if key in self._used:
                start, used = self._used[key]
                self._used[key] = (start, max(0, used - n))


class _Recent:
    """The last ``size`` answers by key, thread-safe (a small LRU)."""

    def __init__(self, size: int):
        from collections import OrderedDict

        self.size, self._lock, self._items = size, threading.Lock(), OrderedDict()

    def get(self, key: Any) -> Any:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _check_quota_args(quota: Optional[int], quota_window: float) -> None:
    """Raises a one-line :class:`ValueError` naming a bad ``quota`` or ``quota_window``."""
    if quota is not None:
        try:
            whole = int(quota)
        except (TypeError, ValueError, OverflowError):  # None-like, NaN, inf
            whole = 0
        if whole < 1 or whole != quota:
            raise ValueError(f"quota must be an integer >= 1, got {quota!r}")
    try:
        window = float(quota_window)
    except (TypeError, ValueError):
        window = math.nan
    # A NaN window never ends and an infinite one has no Retry-After: both would turn every
    # request past the quota into a 500, so refuse them here rather than at request time.
    if not (math.isfinite(window) and window > 0):
        raise ValueError(f"quota_window must be a finite number of seconds > 0, got {quota_window!r}")


class _LabelServer:
    """The state and route handlers behind :func:`create_app` (arguments already validated).

    Every malformed request is answered ``400``: its failure depends only on its body, so a
    retry (which clients do on ``5xx``) could never succeed. ``500`` is kept for the model failing.
    """

    def __init__(self, predictor: LabelPredictor, *, model_name: str, num_classes: Optional[int],
                 class_names: Optional[Sequence[str]], token: Optional[str], max_batch_size: int,
                 max_request_bytes: int, quota: Optional[_Quota]):
        self.predictor, self.model_name, self.quota = predictor, model_name, quota
        self.input_size: Tuple[int, int, int] = tuple(predictor.input_size)
        self.per_image = int(np.prod(self.input_size))
        self.max_batch_size, self.max_request_bytes = max_batch_size, max_request_bytes
        self.token_bytes = None if token is None else token.encode()
        self.lock = threading.Lock()  # one forward pass at a time: the model is not thread-safe
        self.answered = _Recent(4096)  # request id -> answer, so a retried request is answered, not re-run
        self.metadata = {
            "name": model_name,
            "versions": [_VERSION],
            "platform": "pytorch_timm",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *self.input_size]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"num_classes": num_classes, "label_only": True, "max_batch_size": max_batch_size,
                           **({} if class_names is None else {"class_names": list(class_names)})},
        }

    # ------------------------------------------------------------------ access
    def authorize(self, request: Request) -> str:
        """Checks the bearer token (``401`` / ``403``); returns the quota key of the client."""
        if self.token_bytes is None:
            return request.client.host if request.client else "anonymous"
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _HTTPError(401, "missing bearer token (send 'Authorization: Bearer TOKEN')",
                             {"WWW-Authenticate": 'Bearer realm="db3"'})
        if not hmac.compare_digest(given.strip().encode(), self.token_bytes):
            raise _HTTPError(403, "invalid token")
        return "token"

    def check_model(self, request: Request) -> None:
        """Raises ``404`` when the path names another model."""
        name = request.path_params["name"]
        if name != self.model_name:
            raise _HTTPError(404, f"unknown model {_clip(name)}; this server serves {self.model_name!r}")

    def refused(self, request: Request) -> Optional[JSONResponse]:
        """The error response for a request that fails auth or names another model, else ``None``."""
        try:
            self.authorize(request)
            self.check_model(request)
        except _HTTPError as err:
            return _error(err)
        return None

    # ------------------------------------------------------------------ request decoding
    async def read_body(self, request: Request) -> bytes:
        """The request body; ``413`` from its Content-Length or as soon as it streams past the limit."""
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _HTTPError(400, "invalid Content-Length header") from None
            if size > limit:
                raise _HTTPError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HTTPError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def decode(self, body: bytes, header_length: Optional[str] = None) -> Tuple[torch.Tensor, Optional[str], bool]:
        """Parses an infer request (JSON, or a JSON header and binary tensors when ``header_length`` comes with it);
        returns its ``(N, C, H, W)`` float32 batch, its ``id`` and whether the labels are asked for as binary data,
        or raises ``400``."""
        body, blob = self._split_binary(body, header_length)
        try:
            req = json.loads(body)
        except RecursionError:  # json's C parser recurses once per nesting level
            raise _HTTPError(400, "request body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as err:  # also ints past the 4300-digit limit
            raise _HTTPError(400, f"request body is not valid JSON: {str(err)[:200]}") from None
        if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
            raise _HTTPError(400, "expected a JSON object with 'inputs': a list holding one tensor named 'input'")
        binary_out = self._check_outputs(req.get("outputs"))
        tensor = req["inputs"][0]
        if not isinstance(tensor, dict):
            raise _HTTPError(400, "each input must be an object with name, shape, datatype and data")
        if tensor.get("name", "input") != "input":
            raise _HTTPError(400, f"unknown input {_clip(tensor.get('name'))}; expected 'input'")
        if tensor.get("datatype") != "FP32":
            raise _HTTPError(400, f"input datatype must be 'FP32', got {_clip(tensor.get('datatype'))}")
        shape = self._check_shape(tensor.get("shape"))
        request_id = req.get("id")
        if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 128):
            raise _HTTPError(400, f"request 'id' must be a string of 1 to 128 characters, got {_clip(request_id)}")
        pixels = self._binary_pixels(tensor, blob, shape) if blob is not None else self._pixels(tensor.get("data"), shape)
        return torch.from_numpy(pixels), request_id, binary_out

    @staticmethod
    def _split_binary(body: bytes, header_length: Optional[str]) -> Tuple[bytes, Optional[bytes]]:
        """``(JSON header, binary part)`` of a binary-extension request (``(body, None)`` for plain JSON)."""
        if header_length is None:
            return body, None
        try:
            k = int(header_length)
        except ValueError:
            raise _HTTPError(400, f"Inference-Header-Content-Length must be an integer, got {_clip(header_length)}") from None
        if not 0 < k <= len(body):
            raise _HTTPError(400, f"Inference-Header-Content-Length {k} does not fit a body of {len(body)} bytes")
        return body[:k], body[k:]

    def _binary_pixels(self, tensor: Dict[str, Any], blob: bytes, shape: List[int]) -> np.ndarray:
        """The input tensor sent as binary data (little-endian FP32, row major) after the JSON header."""
        params = tensor.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        need = shape[0] * self.per_image * 4
        if "data" in tensor or not isinstance(size, int) or isinstance(size, bool):
            raise _HTTPError(400, "a binary request's input needs parameters.binary_data_size and no 'data'")
        if size != need or len(blob) != size:
            raise _HTTPError(400, f"binary input of {len(blob)} bytes (binary_data_size {_clip(size)}); shape {shape} "
                                  f"needs {need}")
        arr = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=True)
        if not np.isfinite(arr).all():
            raise _HTTPError(400, "input data contains NaN or infinity; expected pixel values in [0, 1]")
        return arr.reshape(shape)

    @staticmethod
    def _check_outputs(outputs: Any) -> bool:
        """Raises ``400`` unless ``outputs`` is absent or a list asking only for ``label``; returns whether the labels
        are asked for as binary data (``parameters.binary_data``)."""
        if outputs is None:
            return False
        if not isinstance(outputs, list):
            raise _HTTPError(400, f"'outputs' must be a list of objects naming 'label', got {_clip(outputs)}")
        binary = False
        for out in outputs:
            name = out.get("name") if isinstance(out, dict) else out
            if name != "label":
                raise _HTTPError(400, f"unknown output {_clip(name)}: this label-only endpoint answers only 'label'")
            params = out.get("parameters")
            binary = binary or (isinstance(params, dict) and params.get("binary_data") is True)
        return binary

    def _check_shape(self, shape: Any) -> List[int]:
        """Returns ``shape`` if it is ``[N, C, H, W]`` with ``1 <= N <= max_batch_size`` and the model's
        ``(C, H, W)``; raises ``400`` otherwise. Huge ints are fine: they are only compared."""
        if (not isinstance(shape, list) or len(shape) != 4
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise _HTTPError(400, f"input shape must be [N, C, H, W] integers, got {_clip(shape)}")
        n = shape[0]
        if n < 1:
            raise _HTTPError(400, f"batch size must be at least 1, got {_clip(n)}")
        if n > self.max_batch_size:
            raise _HTTPError(400, f"batch of {_clip(n)} images exceeds max_batch_size {self.max_batch_size}; "
                                  f"split the request")
        if tuple(shape[1:]) != self.input_size:
            c, h, w = self.input_size
            raise _HTTPError(400, f"input shape {_clip(shape)} does not match the model input [N, {c}, {h}, {w}] "
                                  f"(resize on the client)")
        return shape

    def _pixels(self, data: Any, shape: List[int]) -> np.ndarray:
        """``data`` as a float32 array of ``shape`` (one vectorised conversion); raises ``400`` if it can't be."""
        if not isinstance(data, list):
            raise _HTTPError(400, "input 'data' must be a JSON array of numbers")
        try:
            arr = np.asarray(data, dtype=np.float32)
        except OverflowError:  # a JSON integer beyond float range (e.g. 400 digits)
            raise _HTTPError(400, "input 'data' holds a number too large for FP32") from None
        except (ValueError, TypeError, RecursionError):
            raise _HTTPError(400, "input 'data' must hold only numbers") from None
        if arr.size != shape[0] * self.per_image:
            raise _HTTPError(400, f"input 'data' holds {arr.size} values, shape {shape} needs "
                                  f"{shape[0] * self.per_image}")
        if not np.isfinite(arr).all():
            raise _HTTPError(400, "input 'data' contains NaN or infinity; expected pixel values in [0, 1]")
        return arr.reshape(shape)

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor) -> List[int]:
        """The model's labels for batch ``x`` as a list of ints (runs in a worker thread)."""
        with self.lock, torch.inference_mode():
            labels = self.predictor(x.to(self.predictor.device))
        return labels.cpu().tolist()

    # ------------------------------------------------------------------ routes
    async def live(self, request: Request) -> JSONResponse:
        """``GET /v2/health/live``."""
        return _respond({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        """``GET /v2/health/ready``."""
        return _respond({"ready": True})

    async def server_meta(self, request: Request) -> JSONResponse:
        """``GET /v2``: server metadata."""
        return _respond({"name": "db3-timm", "version": _VERSION, "extensions": ["binary_tensor_data"]})

    async def model_meta(self, request: Request) -> JSONResponse:
        """``GET /v2/models/{name}``: the model metadata (see the module docstring)."""
        return self.refused(request) or _respond(self.metadata)

    async def model_ready(self, request: Request) -> JSONResponse:
        """``GET /v2/models/{name}/ready``."""
        return self.refused(request) or _respond({"name": self.model_name, "ready": True})

    async def infer(self, request: Request) -> JSONResponse:
        """``POST /v2/models/{name}/infer``: the labels of the posted batch, or an error response."""
        from starlette.concurrency import run_in_threadpool

        taken = None
        try:
            key = self.authorize(request)
            self.check_model(request)
            body = await self.read_body(request)
            x, request_id, binary = await run_in_threadpool(  # parsing takes ms: off the event loop
                self.decode, body, request.headers.get("inference-header-content-length"))
            repeated = self.answered.get((key, request_id)) if request_id is not None else None
            if repeated is not None:  # a client retrying a request whose answer it lost: no second query
                return _answer(*repeated)
            if self.quota is not None:  # spent only once the request is known to be well-formed
                self.quota.take(key, x.shape[0])
                taken = (key, x.shape[0])
            labels = await run_in_threadpool(self.predict, x)
        except _HTTPError as err:
            return _error(err)
        except Exception as err:  # the model failed: report, refund, keep serving
            if taken is not None:
                self.quota.refund(*taken)
            return _respond({"error": f"inference failed: {type(err).__name__}"}, 500)
        header = {"model_name": self.model_name, "model_version": _VERSION, **({"id": request_id} if request_id else {}),
                  "outputs": [{"name": "label", "shape": [len(labels)], "datatype": "INT64"}]}
        if binary:
            blob = np.asarray(labels, dtype="<i8").tobytes()
            header["outputs"][0]["parameters"] = {"binary_data_size": len(blob)}
        else:
            header["outputs"][0]["data"], blob = labels, None
        if request_id is not None:
            self.answered.put((key, request_id), (header, blob))
        return _answer(header, blob)

    def routes(self) -> List[Route]:
        """The app's routes, bound to this server's handlers."""
        from starlette.routing import Route

        return [
            Route("/v2", self.server_meta, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/{name}", self.model_meta, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
        ]


def create_app(
    model: nn.Module,
    *,
    model_name: str,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
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
        class_names: advertised in the metadata, so a client's reports and students name the classes (default:
            :func:`~db3_timm.oracle.timm_class_names` of ``model``; none for a model without them).
        token: bearer token required on model routes (``None``: no auth; health routes are open).
        max_batch_size: largest ``N`` accepted in one request (``400`` above it).
        max_request_bytes: largest request body (``413`` above it); default fits a full batch of
            JSON floats (24 bytes per value) plus 64 KiB.
        quota: optional images per client per ``quota_window`` seconds (``429`` + ``Retry-After`` beyond).
        quota_window: length of a quota window in seconds; finite and ``> 0``.

    Returns:
        A :class:`starlette.applications.Starlette` app; ``app.state.model_name`` is ``model_name``.

    Raises:
        ValueError: a bad ``input_size``, ``max_batch_size``, ``quota``, ``quota_window``, ``token`` or ``class_names``.
    """
    from starlette.applications import Starlette

    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) positive integers, got {input_size!r}")
    if int(max_batch_size) < 1:
        raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    _check_quota_args(quota, quota_window)
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None")
    max_batch_size = int(max_batch_size)
    num_classes = getattr(model, "num_classes", None) if num_classes is None else num_classes
    class_names = check_class_names(timm_class_names(model) if class_names is None else class_names, num_classes)
    if max_request_bytes is None:
        max_request_bytes = 24 * max_batch_size * int(np.prod(input_size)) + 65536
    server = _LabelServer(
        LabelPredictor(model, mean, std, input_size),
        model_name=model_name,
        num_classes=num_classes,
        class_names=class_names,
        token=token,
        max_batch_size=max_batch_size,
        max_request_bytes=int(max_request_bytes),
        quota=None if quota is None else _Quota(quota, quota_window),
    )
    app = Starlette(routes=server.routes())
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
