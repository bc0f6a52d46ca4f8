"""Label-only teachers behind an HTTP endpoint (Open Inference Protocol v2 / KServe / Triton).

:meth:`db3_timm.LabelOracle.from_url` wraps a :class:`RemotePredictor` from this module; the
oracle keeps its usual contract (pixel-space float ``(N, C, H, W)`` in, ``int64`` labels out,
exact counts, budget refused before anything is sent, chunks of ``max_batch_size``).

Wire format (any OIP v2 REST server whose model has one FP32 input and an integer label
output works, e.g. ``db3 serve``; standard stdlib ``urllib``, no extra dependency)::

    GET  {url}/v2/models/{model}        (optional; read for input_size, num_classes, class_names)
      <- {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, C, H, W]}],
          "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
          "parameters": {"num_classes": K, "class_names": [K names]}}   # parameters: db3 extension
    POST {url}/v2/models/{model}/infer   Authorization: Bearer TOKEN   (when a token is set)
      -> {"inputs": [{"name": "input", "shape": [N, C, H, W], "datatype": "FP32",
                      "data": [N*C*H*W floats, row-major]}],
          "outputs": [{"name": "label"}]}
      <- {"model_name": ..., "outputs": [{"name": "label", "shape": [N], "datatype": "INT64",
                                          "data": [N ints]}]}

Before sending, images are cast to float32, clamped to ``[0, 1]`` and (when the server's
``H, W`` are known and differ) resized bilinearly, exactly as :meth:`LabelOracle.from_module`
does in-process, so a remote teacher answers the same labels as the local one. Float32 values
travel as 9-significant-digit decimals, which round-trip float32 exactly: the server sees
bit-identical pixels.

Failures: connection errors, timeouts, ``429`` and ``5xx`` are retried ``retries`` times with
exponential backoff (``backoff * 2**attempt`` seconds, capped at ``max_backoff``; a
``Retry-After`` header wins). Other ``4xx`` are never retried: ``401``/``403`` raise
:class:`RemoteAuthError` (a :class:`PermissionError`), the rest :class:`RemoteOracleError`.
A request that ultimately fails raises with ``queries_spent``: the oracle's count so far,
which includes only chunks already answered. The token (argument or ``DB3_TOKEN``) is sent
only in the ``Authorization`` header; it is never logged, printed or written anywhere.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ._checks import check_class_names
from ._preprocess import resize

__all__ = ["RemotePredictor", "RemoteOracleError", "RemoteAuthError", "TOKEN_ENV", "public_url"]

TOKEN_ENV = "DB3_TOKEN"
logger = logging.getLogger(__name__)
_RETRY_STATUS = {429, 500, 502, 503, 504}


class RemoteOracleError(RuntimeError):
    """A remote teacher request failed for good.

    Attributes:
        status: HTTP status (``None`` for connection errors and timeouts).
        queries_spent: queries the oracle had counted when the request failed (answered chunks only).
    """

    def __init__(self, message: str, *, status: Optional[int] = None, queries_spent: Optional[int] = None):
        self.status, self.queries_spent = status, queries_spent
        if queries_spent is not None:
            message = f"{message} ({queries_spent} queries spent so far; the failed request was not counted)"
        super().__init__(message)


class RemoteAuthError(RemoteOracleError, PermissionError):
    """The server refused the token (``401`` missing, ``403`` wrong). Never retried."""


class RemotePredictor:
    """Callable ``pixel batch -> int64 labels`` that asks an Open Inference Protocol v2 server.

    Args:
        url: server base URL (``http://host:port``), or a full ``.../v2/models/NAME`` URL when ``model`` is None.
        model: model name on the server.
        token: bearer token (default: environment variable ``DB3_TOKEN``; none when unset).
        timeout: seconds per HTTP request (connect + read).
        retries: retries after the first attempt on connection errors, timeouts, 429 and 5xx.
        backoff: first retry delay in seconds, doubled on each retry.
        max_backoff: cap on one delay (also on a server's ``Retry-After``).
        input_size: ``(C, H, W)`` the server expects; inputs of another ``H, W`` are resized.
        wire: ``"binary"`` sends pixels and receives labels as binary tensor data (the OIP binary tensor extension,
            as Triton and KServe implement it), ``"json"`` as JSON numbers; ``"auto"`` (default) takes binary when
            the server lists ``binary_tensor_data`` among its extensions (``GET /v2``).
    """

    def __init__(
        self,
        url: str,
        model: Optional[str] = None,
        *,
        token: Optional[str] = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        input_size: Optional[Tuple[int, int, int]] = None,
        sleep: Callable[[float], None] = time.sleep,
        wire: str = "auto",
    ):
        url = url.rstrip("/")
        if model is None:
            if "/v2/models/" not in url:
                raise ValueError(f"pass model=NAME or a URL ending in /v2/models/NAME, got {public_url(url)!r}")
            url, model = url.split("/v2/models/", 1)
            model = model.split("/", 1)[0]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port], got {public_url(url)!r}")
        if parts.username or parts.password:
            raise ValueError(f"credentials in the URL ({public_url(url)!r}) would be logged and recorded; pass token= "
                             f"or set {TOKEN_ENV} instead")
        if int(retries) < 0 or timeout <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0, got {retries!r}, {timeout!r}")
        if wire not in ("auto", "json", "binary"):
            raise ValueError(f"wire must be 'auto', 'json' or 'binary', got {wire!r}")
        self.url = url
        self.model = model
        self.wire = wire
        self._token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self._sleep = sleep
        self._oracle_ref: Optional[Callable[[], Any]] = None
        quoted = urllib.parse.quote(model, safe="")
        self._meta_url = f"{url}/v2/models/{quoted}"
        self._infer_url = f"{url}/v2/models/{quoted}/infer"

    @property
    def public_url(self) -> str:
        """The server URL as it may be shown or recorded: query values (keys, signatures) replaced by ``***``."""
        return public_url(self.url)

    def __repr__(self) -> str:  # never shows the token
        return f"RemotePredictor(url={self.public_url!r}, model={self.model!r}, auth={'yes' if self._token else 'no'})"

    def bind(self, oracle: Any) -> None:
        """Lets error messages report ``oracle.queries`` (held weakly)."""
        self._oracle_ref = weakref.ref(oracle)

    def _spent(self) -> Optional[int]:
        oracle = self._oracle_ref() if self._oracle_ref is not None else None
        return None if oracle is None else oracle.queries

    # ------------------------------------------------------------------ HTTP
    def _request(self, url: str, body: Optional[bytes] = None) -> Dict[str, Any]:
        """GET (or POST ``body`` as JSON to) ``url``; returns the JSON answer."""
        raw, _ = self._send(url, body, {"Content-Type": "application/json"} if body is not None else {})
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteOracleError(f"{'POST' if body is not None else 'GET'} {public_url(url)}: the server answered "
                                    f"invalid JSON", status=200, queries_spent=self._spent()) from None

    def _send(self, url: str, body: Optional[bytes], extra_headers: Dict[str, str]) -> Tuple[bytes, Any]:
        """One request with retries on connection errors, timeouts, 429 and 5xx; returns ``(body, headers)``."""
        headers = {"Accept": "application/json, application/octet-stream", **extra_headers}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        what = f"{'POST' if body is not None else 'GET'} {public_url(url)}"
        attempt = 0
        while True:
            retry_after = None
            req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
            try:
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    return resp.read(), resp.headers
            except urllib.error.HTTPError as err:
                status = err.code
                message = _error_message(err)
                if status in (401, 403):
                    raise RemoteAuthError(
                        f"{what}: HTTP {status}: {message} "
                        f"({'no token was sent; pass token= or set ' + TOKEN_ENV if not self._token else 'the token was refused'})",
                        status=status, queries_spent=self._spent()) from None
                if status not in _RETRY_STATUS:
                    raise RemoteOracleError(f"{what}: HTTP {status}: {message}", status=status,
                                            queries_spent=self._spent()) from None
                retry_after = _retry_after(err.headers.get("Retry-After"))
                failure: Tuple[Optional[int], str] = (status, f"HTTP {status}: {message}")
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                    OSError) as err:
                reason = getattr(err, "reason", err)
                failure = (None, f"{type(reason).__name__}: {reason}")
            if attempt >= self.retries:
                status, text = failure
                raise RemoteOracleError(f"{what} failed after {attempt + 1} attempt(s): {text}", status=status,
                                        queries_spent=self._spent())
            delay = min(self.backoff * (2 ** attempt), self.max_backoff)
            if retry_after is not None:
                delay = min(max(retry_after, 0.0), self.max_backoff)
            # A rate-limited or flaky teacher slows a long job down; say why it is waiting.
            maybe_run = " (the lost request may have run: the retry carries its id)" if body and failure[0] is None else ""
            logger.warning("%s: %s; retry %d of %d in %.1f s%s", what, failure[1], attempt + 1, self.retries, delay,
                           maybe_run)
            self._sleep(delay)
            attempt += 1

    def metadata(self) -> Dict[str, Any]:
        """The model metadata (``GET /v2/models/{model}``)."""
        return self._request(self._meta_url)

    def describe(self) -> Dict[str, Any]:
        """``{"input_size": (C, H, W) or None, "num_classes": K or None, "class_names": K names or None}`` read
        from the metadata.

        A server without a usable metadata answer (``404``/``405`` or an unexpected layout) gives ``None``s, and
        names that do not fit the classes are left out; auth errors and connection failures raise.
        """
        try:
            meta = self.metadata()
        except RemoteAuthError:
            raise
        except RemoteOracleError as err:
            if err.status in (404, 405, 501):
                return {"input_size": None, "num_classes": None, "class_names": None}
            raise
        input_size = num_classes = class_names = None
        try:
            shape = meta["inputs"][0]["shape"]
            if len(shape) == 4 and all(int(s) > 0 for s in shape[1:]):
                input_size = tuple(int(s) for s in shape[1:])
        except (KeyError, IndexError, TypeError, ValueError):
            pass
        params = meta.get("parameters") if isinstance(meta, dict) else None
        if isinstance(params, dict) and isinstance(params.get("num_classes"), int):
            num_classes = params["num_classes"]
        if isinstance(params, dict) and params.get("class_names") is not None:
            try:
                class_names = check_class_names(params["class_names"], num_classes)
            except ValueError:  # a server's malformed names are its business: the labels still work without them
                class_names = None
        return {"input_size": input_size, "num_classes": num_classes, "class_names": class_names}

    # ------------------------------------------------------------------ predict
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
        if self.input_size is not None:
            x = resize(x, self.input_size[1:])
        # A fresh id per request: a retry after a lost answer carries the same id, so a server that remembers ids
        # (db3 serve does) answers it from its cache instead of running -- and charging -- the batch twice.
        request_id = uuid.uuid4().hex
        if self._binary():
            raw, headers = self._send(self._infer_url, *_binary_request(x, request_id))
        else:
            raw, headers = self._send(self._infer_url, _json_request(x, request_id), {"Content-Type": "application/json"})
        try:
            labels = _labels_from(raw, headers.get("Inference-Header-Content-Length"))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError):
            raise RemoteOracleError("the server's answer has no 'outputs' tensor of labels",
                                    queries_spent=self._spent()) from None
        return labels if labels.shape == (x.shape[0],) else labels.reshape(-1)

    def _binary(self) -> bool:
        """Whether to use the binary tensor extension: asked for, or (``"auto"``) the server lists it."""
        if self.wire == "auto":
            try:
                extensions = self._request(f"{self.url}/v2").get("extensions", [])
            except RemoteAuthError:
                raise
            except RemoteOracleError:
                extensions = []
            self.wire = "binary" if "binary_tensor_data" in extensions else "json"
        return self.wire == "binary"


def _json_request(x: torch.Tensor, request_id: str) -> bytes:
    """The infer request with the pixels as JSON numbers (what every OIP v2 server takes)."""
    values = x.contiguous().flatten().tolist()
    # 9 significant digits round-trip any float32 exactly and halve the body against repr()'s 17.
    data = ",".join(["%.9g"] * len(values)) % tuple(values)
    head = json.dumps({"name": "input", "shape": list(x.shape), "datatype": "FP32"})[:-1]
    return ('{"id":"' + request_id + '","inputs":[' + head + ',"data":[' + data
            + ']}],"outputs":[{"name":"label"}]}').encode()


def _binary_request(x: torch.Tensor, request_id: str) -> Tuple[bytes, Dict[str, str]]:
    """The infer request with the pixels as binary tensor data (little-endian FP32) after a JSON header."""
    blob = x.contiguous().numpy().astype("<f4", copy=False).tobytes()
    head = json.dumps({"id": request_id, "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                                     "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}).encode()
    return head + blob, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


def _labels_from(raw: bytes, header_length: Optional[str]) -> torch.Tensor:
    """The ``label`` output of an infer answer, sent as JSON data or as binary data after the JSON header."""
    blob = b""
    if header_length is not None:
        k = int(header_length)
        raw, blob = raw[:k], raw[k:]
    outs = json.loads(raw)["outputs"]
    out = next((o for o in outs if o.get("name") == "label"), outs[0])
    if "data" in out:
        return torch.as_tensor(out["data"])
    size = int(out["parameters"]["binary_data_size"])
    dtype = {"INT64": "<i8", "INT32": "<i4", "UINT8": "u1"}[out.get("datatype", "INT64")]
    return torch.from_numpy(np.frombuffer(blob[:size], dtype=dtype).astype(np.int64))


def public_url(url: str) -> str:
    """Returns ``url`` without user info and with every query value replaced by ``***`` (safe to log and record)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only for a GET to the same origin: a bearer token never travels to another host, and a
    POST is never silently re-sent as a GET (urllib's default does both)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's hook)
        if req.get_method() != "GET" or _origin(newurl) != _origin(req.full_url):
            raise urllib.error.HTTPError(
                req.full_url, code, f"refused to follow a {code} redirect of a {req.get_method()} request to "
                                    f"{public_url(newurl)}; point the client at the final URL", headers, None)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SafeRedirects)


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read()
    except Exception:  # a body we cannot read still has a status worth reporting
        return err.reason or ""
    try:
        obj = json.loads(raw)
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])[:500]
    except ValueError:
        pass
    return raw.decode("utf-8", "replace")[:500] or str(err.reason)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None  # 'nan' / 'inf' are not a wait
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
