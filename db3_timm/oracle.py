"""Label-only black-box teachers.

A :class:`LabelOracle` is the only thing DB3 components may ask about the
teacher: it takes images in pixel space ``[0, 1]`` and answers class labels,
nothing else. It owns the query accounting (one query per image), the optional
budget, and input validation, so every algorithm built on top gets exact
counts for free.
"""
from __future__ import annotations

import math
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ._checks import check_class_names
from ._cpu_memory import keep_activation_buffers
from ._io import module_fingerprint
from ._preprocess import PixelTransform

__all__ = [
    "LabelOracle",
    "timm_class_names",
    "LabelPredictor",
    "create_timm_model",
    "QueryBudgetExceeded",
    "HubUnavailableError",
    "load_checkpoint_state_dict",
]

QueryLog = Callable[[int, int], None]
"""Observer called once per batch sent to the teacher with ``(batch_size, total_queries)``."""


class QueryBudgetExceeded(RuntimeError):
    """Raised before a call that would spend more queries than the budget has left.

    Attributes:
        requested: images in the refused call.
        remaining: queries still available (nothing was spent by the refused call).
    """

    def __init__(self, requested: int, remaining: int):
        self.requested = int(requested)
        self.remaining = int(remaining)
        super().__init__(
            f"query budget exceeded: the call needs {self.requested} queries but only "
            f"{self.remaining} remain; nothing was spent"
        )


class HubUnavailableError(OSError):
    """Raised when a ``hf-hub:`` teacher can be neither downloaded nor found in the local cache."""


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Input values per teacher forward on a CPU when no ``max_batch_size`` is given (1 MB of float32 pixels; at least
#: :data:`CPU_MIN_BATCH` images). Common CNNs then keep each activation under glibc's 32 MiB mmap ceiling, so its
#: buffers are reused instead of faulted in again on every forward (``_cpu_memory``); a CPU gains nothing from
#: bigger batches.
CPU_PIXELS_PER_FORWARD = 1 << 18
CPU_MIN_BATCH = 8


class LabelPredictor(nn.Module):
    """Pixel-space batch -> argmax labels of a classifier, through the model's own preprocessing.

    Args:
        model: classifier mapping normalised images to logits.
        mean, std, input_size: its pixel-space preprocessing (see :class:`~db3_timm._preprocess.PixelTransform`).
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast inference (GPU speed; answers near a
            boundary may differ from fp32, so the precision is part of the teacher's identity).
        channels_last: run the model in channels-last memory format (faster convolutions on GPU).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], input_size: Sequence[int],
                 *, precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model.eval().requires_grad_(False)
        self.transform = PixelTransform(mean, std, input_size)
        self.input_size = self.transform.input_size
        self.precision, self.channels_last = precision, bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        ref = next(iter(model.parameters()), None)
        if ref is not None:
            self.transform.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else torch.float32)

    @property
    def device(self) -> torch.device:
        """Where the model (and so its input) lives."""
        return self.transform.scale.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(x).argmax(dim=1)


class LabelOracle:
    """A teacher that answers only class labels, with exact query accounting.

    Calling the oracle with a float tensor ``(N, C, H, W)`` in pixel space returns the
    teacher's ``int64`` labels ``(N,)`` on the caller's device. Inputs are clamped to
    ``[0, 1]``; each image costs one query, counted in :attr:`queries`. A call that would
    exceed :attr:`budget` raises :class:`QueryBudgetExceeded` before anything is sent.

    Args:
        predict: function mapping a validated pixel-space batch (on :attr:`device`) to labels.
        num_classes: number of classes the teacher can answer; labels outside it are an error.
        input_size: ``(C, H, W)`` the teacher expects; the channel count is checked on input.
        budget: optional cap on the total number of queries.
        max_batch_size: largest batch sent to the teacher at once; larger calls are chunked.
        query_log: optional observer called per batch sent as ``(batch_size, total_queries)``.
        device: where ``predict`` wants its input (``None``: leave inputs where they are).
        name: human-readable teacher id, used in reports and progress output.
        class_names: the teacher's ``num_classes`` class names, when it has them (reports, the transfer set's
            ``ClassLabel`` and the student's ``label_names`` use them; default: the class indices).
        quantize: ``"uint8"`` sends every query on the 8-bit grid (``round(255 x) / 255``), as an image API
            that takes PNG/JPEG bytes would receive it; ``None`` sends the float pixels as they are.
        store: a :class:`~db3_timm.store.QueryStore` keeping every (image, answer) (see also ``store.attached``).
        identity: what identifies the teacher itself (a weights fingerprint, an endpoint and model name),
            compared when a job resumes so two teachers' answers never mix in one output (default: ``name``).
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], Any],
        *,
        num_classes: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
        budget: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        query_log: Optional[QueryLog] = None,
        device: Optional[Union[str, torch.device]] = None,
        name: str = "teacher",
        identity: Optional[str] = None,
        quantize: Optional[str] = None,
        store: Any = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        if max_batch_size is not None and int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        if input_size is not None and len(tuple(input_size)) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)!r}")
        self._predict = predict
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = check_class_names(class_names, self.num_classes)
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.budget = budget
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)
        self.query_log = query_log
        self.device = None if device is None else torch.device(device)
        self.name = name
        self.identity = identity or name
        if quantize not in (None, "uint8"):
            raise ValueError(f"quantize must be None or 'uint8', got {quantize!r}")
        self.quantize = quantize
        self.store = store
        self._lock = threading.Lock()
        self._reserved = 0
        self.queries = 0

    # ------------------------------------------------------------------ accounting
    @property
    def budget(self) -> Optional[int]:
        """The total query cap, or ``None`` for no cap."""
        return self._budget

    @budget.setter
    def budget(self, value: Optional[int]) -> None:
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value) and int(value) == value and value >= 0)
        if not ok:
            raise ValueError(f"budget must be a non-negative integer or None, got {value!r}")
        self._budget = None if value is None else int(value)

    @property
    def remaining(self) -> Optional[int]:
        """Queries left under the budget (``None`` when there is no budget)."""
        return None if self._budget is None else max(self._budget - self.queries, 0)

    def state_dict(self) -> Dict[str, Optional[int]]:
        """Returns the accounting state (queries spent, budget) for checkpointing a long job."""
        return {"queries": self.queries, "budget": self._budget}

    def load_state_dict(self, state: Dict[str, Optional[int]]) -> None:
        """Restores accounting saved by :meth:`state_dict` so a resumed job keeps honest totals."""
        from ._checks import check_int

        self.queries = check_int("queries", state.get("queries"), 0)
        if state.get("budget") is not None:  # a saved "no budget" never lifts the budget this oracle has
            self.budget = state["budget"]

    # ------------------------------------------------------------------ queries
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the teacher's labels, ``int64`` ``(N,)`` on ``x``'s device, for pixel-space images ``x``."""
        self._check_input(x)
        n = x.shape[0]
        with self._lock:  # check and reserve in one step, so concurrent calls never overrun the budget
            if self._budget is not None and self.queries + self._reserved + n > self._budget:
                raise QueryBudgetExceeded(n, self._budget - self.queries - self._reserved)
            self._reserved += n
        step = self.max_batch_size or n
        out, sent = [], 0
        try:
            with torch.inference_mode():
                for start in range(0, n, step):
                    chunk = self._prepare(x[start:start + step])
                    answer = self._predict(chunk)
                    # Counted once sent, before its answer is checked: a malformed answer was paid for too.
                    with self._lock:
                        self.queries += chunk.shape[0]
                        self._reserved -= chunk.shape[0]
                    sent += chunk.shape[0]
                    labels = self._check_labels(answer, chunk.shape[0])
                    if self.store is not None:
                        self.store.record(chunk, labels)
                    if self.query_log is not None:
                        self.query_log(chunk.shape[0], self.queries)
                    out.append(labels)
        finally:
            with self._lock:
                self._reserved -= n - sent
        labels = out[0] if len(out) == 1 else torch.cat(out)
        return labels.to(x.device)

    def _prepare(self, chunk: torch.Tensor) -> torch.Tensor:
        """Moves a chunk to the teacher's device, in the box, on the 8-bit grid when ``quantize`` asks for it."""
        if self.device is not None and chunk.device != self.device:
            if self.device.type == "cuda" and chunk.device.type == "cpu":
                chunk = chunk.pin_memory()  # page-locked, so the copy below overlaps with queued GPU work
            chunk = chunk.to(self.device, non_blocking=True)
        chunk = chunk.clamp(0.0, 1.0)
        if self.quantize == "uint8":  # what an image API receives: round(255 x) / 255
            chunk = chunk.mul(255.0).round_().div_(255.0)
        return chunk

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"oracle input must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"oracle input must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"oracle input must have shape (N, C, H, W), got {x.dim()} dims {tuple(x.shape)}")
        if x.is_meta:
            raise ValueError("oracle input is a meta tensor (shape only, no pixels); pass real image data")
        if x.shape[0] == 0:
            raise ValueError("oracle input is an empty batch (N=0); expected at least one image")
        if min(x.shape[1:]) == 0:
            raise ValueError(f"oracle input has an empty dimension, shape {tuple(x.shape)}; expected (N, C, H, W) >= 1")
        if self.input_size is not None and x.shape[1] != self.input_size[0]:
            raise ValueError(
                f"oracle input has {x.shape[1]} channels, expected {self.input_size[0]} "
                f"(teacher input size {self.input_size})"
            )
        # Checked in slices: a whole-batch mask would cost a quarter of the batch's memory again.
        if not all(bool(torch.isfinite(part).all()) for part in x.reshape(-1).split(1 << 22)):
            raise ValueError("oracle input contains NaN or inf; expected finite pixel values in [0, 1]")

    def _check_labels(self, labels: Any, n: int) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"teacher returned {labels.dtype} values; a label-only teacher must return integer labels")
        if labels.shape != (n,):
            raise ValueError(f"teacher returned labels of shape {tuple(labels.shape)}, expected ({n},)")
        labels = labels.long()
        if self.num_classes is not None:
            bad = (labels < 0) | (labels >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(
                    f"teacher returned label {int(labels[bad][0])}, outside [0, {self.num_classes}) "
                    f"(num_classes={self.num_classes})"
                )
        return labels

    def __repr__(self) -> str:
        return (
            f"LabelOracle(name={self.name!r}, num_classes={self.num_classes}, input_size={self.input_size}, "
            f"queries={self.queries}, budget={self._budget})"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_callable(
        cls,
        fn: Callable[[torch.Tensor], Any],
        *,
        num_classes: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
        **kwargs: Any,
    ) -> "LabelOracle":
        """Wraps any function mapping a pixel-space batch to labels.

        Args:
            fn: callable taking a float tensor ``(N, C, H, W)`` in ``[0, 1]``, returning ``N`` integer labels
                (tensor, numpy array or list).
            num_classes: if given, answers outside ``[0, num_classes)`` raise ``ValueError``.
            input_size: optional ``(C, H, W)``; the channel count is checked on every call.
            **kwargs: :class:`LabelOracle` options (``budget``, ``max_batch_size``, ``query_log``, ...).

        Returns:
            A :class:`LabelOracle` around ``fn``.
        """
        kwargs.setdefault("name", getattr(fn, "__name__", "callable"))
        kwargs.setdefault("identity", f"callable {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}")
        return cls(fn, num_classes=num_classes, input_size=input_size, **kwargs)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        input_size: Sequence[int],
        num_classes: Optional[int] = None,
        precision: str = "fp32",
        channels_last: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs: Any,
    ) -> "LabelOracle":
        """Wraps a classifier ``nn.Module`` whose argmax is the answer.

        Inputs are clamped to ``[0, 1]``, resized (bilinear) when their height/width differ from
        ``input_size``, normalised with ``mean``/``std`` and run under ``torch.inference_mode``.

        Args:
            module: classifier mapping normalised images to logits ``(N, num_classes)``.
            mean: per-channel mean of the module's preprocessing (pixel space).
            std: per-channel std of the module's preprocessing.
            input_size: ``(C, H, W)`` the module expects.
            num_classes: number of outputs (read from ``module.num_classes`` when absent).
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` inference (see :class:`LabelPredictor`).
            channels_last: channels-last memory format (GPU convolutions).
            device: where the teacher runs: the module is moved there (in place, as ``module.to``); default: where
                its parameters are.
            **kwargs: :class:`LabelOracle` options (``budget``, ``max_batch_size``, ``query_log``, ``name``).
                ``max_batch_size`` unset or ``None`` on a CPU: :data:`CPU_PIXELS_PER_FORWARD` input values per
                forward (334 images at 1x28x28, 8 at 3x224x224), and glibc keeps freed activation buffers in the
                process (:func:`~db3_timm._cpu_memory.keep_activation_buffers`); unlimited on an accelerator.

        Returns:
            A :class:`LabelOracle` that never exposes the module's logits.
        """
        input_size = tuple(int(s) for s in input_size)
        if device is not None:
            module.to(device)
        predictor = LabelPredictor(module, mean, std, input_size, precision=precision, channels_last=channels_last)
        if predictor.device.type == "cpu":
            keep_activation_buffers()
            if kwargs.get("max_batch_size") is None:
                kwargs["max_batch_size"] = max(CPU_MIN_BATCH, CPU_PIXELS_PER_FORWARD // math.prod(input_size))
        if num_classes is None:
            num_classes = getattr(module, "num_classes", None)
        kwargs.setdefault("name", type(module).__name__)
        # Another precision is another teacher near the boundaries: its answers must not mix with fp32 ones.
        kwargs.setdefault("identity", f"{type(module).__name__} weights {module_fingerprint(module)}"
                                      + ("" if precision == "fp32" else f" at {precision}"))
        return cls(
            predictor,
            num_classes=num_classes,
            input_size=input_size,
            device=predictor.device,
            **kwargs,
        )

    @classmethod
    def from_timm_model(cls, model: nn.Module, **kwargs: Any) -> "LabelOracle":
        """Wraps an instantiated timm model using its resolved data config (mean, std, input size) and its class
        names (:func:`timm_class_names`, unless ``class_names`` is passed).

        Returns:
            A :class:`LabelOracle` with timm's preprocessing for ``model``.
        """
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        kwargs.setdefault("class_names", timm_class_names(model))
        return cls.from_module(
            model,
            mean=cfg["mean"],
            std=cfg["std"],
            input_size=cfg["input_size"],
            num_classes=getattr(model, "num_classes", None),
            **kwargs,
        )

    @classmethod
    def from_timm(
        cls,
        name: str,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        *,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        pretrained: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        budget: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        query_log: Optional[QueryLog] = None,
        quantize: Optional[str] = None,
        precision: str = "fp32",
        channels_last: bool = False,
        **model_kwargs: Any,
    ) -> "LabelOracle":
        """Builds a timm model (registered name, ``local-dir:PATH`` or ``hf-hub:ID``) as a label-only teacher.

        Args:
            name: timm model name, ``local-dir:PATH`` (a folder written by ``timm.models.save_for_hf``)
                or ``hf-hub:org/name``.
            checkpoint: optional local ``.safetensors`` / ``.pt`` / ``.pth`` weights, loaded with
                ``weights_only=True`` (no arbitrary unpickling).
            num_classes: classifier size passed to ``timm.create_model``.
            in_chans: input channels passed to ``timm.create_model``.
            pretrained: ask timm for pretrained weights of a registered name (needs the Hub).
            device: where the teacher runs (default: CPU).
            budget, max_batch_size, query_log, quantize: :class:`LabelOracle` options.
            precision, channels_last: inference options (see :meth:`from_module`).
            **model_kwargs: passed on to ``timm.create_model``.

        Returns:
            A :class:`LabelOracle` around the model with timm's preprocessing.
        """
        model = create_timm_model(name, checkpoint, num_classes=num_classes, in_chans=in_chans,
                                  pretrained=pretrained, device=device, **model_kwargs)
        return cls.from_timm_model(
            model,
            budget=budget,
            max_batch_size=max_batch_size,
            query_log=query_log,
            quantize=quantize,
            precision=precision,
            channels_last=channels_last,
            name=name if checkpoint is None else f"{name}@{Path(checkpoint).name}",
        )

    @classmethod
    def from_hub(cls, model_id: str, **kwargs: Any) -> "LabelOracle":
        """Loads a timm model from the Hugging Face Hub (``hf-hub:org/name`` or ``org/name``) as a teacher.

        Honours ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``: a model already in the local cache loads
        without a network. When the Hub is unreachable and the model is not cached,
        :class:`HubUnavailableError` explains how to pass a local file instead.

        Returns:
            A :class:`LabelOracle` around the Hub model.
        """
        if not model_id.startswith("hf-hub:"):
            model_id = "hf-hub:" + model_id
        return cls.from_timm(model_id, **kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        model: Optional[str] = None,
        *,
        token: Optional[str] = None,
        timeout: float = 30.0,
        max_batch_size: Optional[int] = 256,
        retries: int = 3,
        backoff: float = 0.5,
        wire: str = "auto",
        **kwargs: Any,
    ) -> "LabelOracle":
        """A teacher served over HTTP by an Open Inference Protocol v2 server (``db3 serve``, KServe, Triton).

        Same contract as every oracle; ``input_size``/``num_classes`` come from the model metadata
        unless given. See :mod:`db3_timm.remote` for the wire format, retries and errors.

        Args:
            url: server base URL, or ``.../v2/models/NAME`` when ``model`` is omitted.
            model: model name on the server.
            token: bearer token (default: environment variable ``DB3_TOKEN``); never logged.
            timeout: seconds per HTTP request.
            max_batch_size: images per request (larger calls are chunked).
            retries, backoff: retries on connection errors, timeouts, 429 and 5xx, with exponential backoff.
            wire: ``"binary"`` (the OIP binary tensor extension), ``"json"``, or ``"auto"``: binary when the server
                lists the extension.
            **kwargs: other :class:`LabelOracle` options (``budget``, ``query_log``, ``num_classes``, ``input_size``,
                ``class_names``, ``name``); the unset sizes and names come from the server's metadata.

        Returns:
            A :class:`LabelOracle` whose queries are HTTP requests.
        """
        from .remote import RemotePredictor

        predictor = RemotePredictor(url, model, token=token, timeout=timeout, retries=retries, backoff=backoff,
                                    input_size=kwargs.get("input_size"), wire=wire)
        meta = predictor.describe()
        if kwargs.get("input_size") is None:
            kwargs["input_size"] = predictor.input_size = meta["input_size"]
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = meta["num_classes"]
        if kwargs.get("class_names") is None and meta["class_names"] and len(meta["class_names"]) == kwargs["num_classes"]:
            kwargs["class_names"] = meta["class_names"]
        kwargs.setdefault("name", f"{predictor.model}@{predictor.public_url}")
        kwargs.setdefault("identity", f"endpoint {predictor.public_url}/v2/models/{predictor.model}")
        oracle = cls(predictor, max_batch_size=max_batch_size, **kwargs)
        predictor.bind(oracle)
        return oracle


def timm_class_names(model: nn.Module) -> Optional[List[str]]:
    """Returns the class names a timm model carries, one per output, or ``None`` when it has none.

    In order: its ``pretrained_cfg["label_names"]`` (what a Hub or ``local-dir`` ``config.json`` holds), each
    replaced by its ``label_descriptions`` entry where there is one; else the ImageNet subset timm infers from the
    classifier size (``imagenet-1k``: ``"tench"``, ``"goldfish"``, ...). Descriptions keep their first name
    (``"tench, Tinca tinca"`` -> ``"tench"``); a name that two classes share gets its index appended
    (``"crane (134)"``), so the names stay distinct.
    """
    n = getattr(model, "num_classes", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not isinstance(n, int) or n < 2:
        return None
    labels = cfg.get("label_names")
    if isinstance(labels, dict):  # id -> name, possibly with gaps: only a complete map names every output
        labels = [labels.get(i, labels.get(str(i))) for i in range(n)]
    if isinstance(labels, (list, tuple)) and len(labels) == n and all(isinstance(v, str) and v for v in labels):
        described = cfg.get("label_descriptions") or {}
        names = [_first_name(str(described[v])) if v in described else v for v in labels]
    else:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        info = ImageNetInfo(subset)
        names = [_first_name(info.index_to_description(i)) for i in range(n)]
    counts = Counter(names)
    return [f"{v} ({i})" if counts[v] > 1 else v for i, v in enumerate(names)]


def _first_name(description: str) -> str:
    """``"tench, Tinca tinca"`` -> ``"tench"``: a description's first name."""
    return description.split(",")[0].strip() or description


def _create_from_hub(name: str, **model_kwargs: Any) -> nn.Module:
    import timm
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return timm.create_model(name, pretrained=True, **model_kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, ConnectionError, TimeoutError) as err:
        repo = name.split(":", 1)[1]
        raise HubUnavailableError(
            f"could not load {name!r}: the Hugging Face Hub is unreachable (or offline mode is on) and "
            f"{repo!r} is not in the local cache ({type(err).__name__}: {err}). Download it where the Hub "
            f"is reachable and pass a local copy instead: LabelOracle.from_timm('local-dir:PATH') for a "
            f"folder with config.json + model.safetensors, or from_timm(ARCH, checkpoint='weights.safetensors')."
        ) from err


def load_checkpoint_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Reads model weights from a ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file without unpickling objects.

    Training checkpoints that wrap the weights (``state_dict``, ``model``, ``state_dict_ema``, first
    found wins) are unwrapped, and a DistributedDataParallel ``module.`` prefix is stripped.

    Returns:
        The state dict (name -> tensor) on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for truncated or foreign files
            raise ValueError(f"{str(path)!r} is not a readable .safetensors file ({err})") from None
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError with a long hint; keep ours short
            raise ValueError(
                f"{str(path)!r} holds objects other than tensors and cannot be loaded with weights_only=True; "
                f"save a plain state_dict (or .safetensors) instead"
            ) from err
    else:
        raise ValueError(f"unsupported checkpoint format {path.suffix!r} for {str(path)!r}; expected .safetensors, .pt or .pth")
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def create_timm_model(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    *,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    pretrained: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Builds a timm model from a registered name, ``local-dir:PATH`` or ``hf-hub:org/name``, in eval mode.

    Args:
        name: timm model name, ``local-dir:PATH`` (a folder written by ``timm.models.save_for_hf``, e.g. a
            student saved by :func:`db3_timm.hub.save_student`) or ``hf-hub:org/name``.
        checkpoint: optional local ``.safetensors`` / ``.pt`` / ``.pth`` weights, loaded with
            ``weights_only=True`` (no arbitrary unpickling).
        num_classes, in_chans: passed to ``timm.create_model``.
        pretrained: ask timm for pretrained weights of a registered name (needs the Hub).
        device: where the model lives (default: CPU).
        **model_kwargs: passed on to ``timm.create_model``.

    Returns:
        The model, with its ``pretrained_cfg`` (mean, std, input size) as timm resolved it.
    """
    import timm

    # Importing registers our paper architectures so their names resolve here.
    from . import models as _models  # noqa: F401

    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    if in_chans is not None:
        model_kwargs["in_chans"] = in_chans
    source = name.split(":", 1)[0] if ":" in name else ""
    if source == "hf-hub":
        model = _create_from_hub(name, **model_kwargs)
    else:
        if source == "local-dir" and not Path(name.split(":", 1)[1]).is_dir():
            raise FileNotFoundError(f"local-dir model folder not found: {name.split(':', 1)[1]!r}")
        model = timm.create_model(name, pretrained=pretrained or source == "local-dir", **model_kwargs)
    if checkpoint is not None:
        model.load_state_dict(load_checkpoint_state_dict(checkpoint), strict=True)
    if device is not None:
        model = model.to(device)
    return model.eval()
