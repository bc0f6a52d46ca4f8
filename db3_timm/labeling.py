"""Whole-dataset soft-labelling, sharded, resumable and split across processes.

:func:`label_dataset` runs a DB3 labeler over every image of a dataset and writes the
answers as shards of a Hugging Face :class:`datasets.Dataset` under ``out_dir``::

    out_dir/
      manifest.json            # config, seed, shards finished, query totals (rewritten atomically)
      references.safetensors   # the teacher-checked references (kept images + teacher labels)
      shards/shard-00000/      # one `Dataset.save_to_disk` folder per shard, renamed into place
        data-00000-of-00001.arrow, dataset_info.json, state.json
        shard.json             # this shard's record: rows, queries, generator seed, config digest
      aborted/                 # queries spent by shards that raised (so totals stay honest)

Columns, one row per input image, ordered by ``index``:

* ``index`` (int64): position in the input ``images``.
* ``image`` (``Array3D`` ``(C, H, W)``, float32; float64 if the input was): the exact pixels the
  teacher saw. Float rather than an 8-bit ``datasets.Image``: sources such as scikit-learn's
  digits (k/16) or resized images are not 8-bit, and rounding would change the input the soft
  labels belong to. ``ds.with_format("torch")`` gives tensors timm models take directly.
* ``label`` (int64): the teacher's label.
* ``distances`` / ``soft_logits`` (fixed-length lists, ``num_classes`` floats): the labeler's
  boundary distances (``inf`` where none was found) and soft-label logits.
* ``queries`` (int64): oracle queries spent on the sample (its own label query included).

Shard ``k`` holds rows ``[k * shard_size, (k + 1) * shard_size)`` and is labelled with the
generator :func:`shard_generator` ``(seed, k)``, so the result does not depend on how many
processes ran, in which order, or how often the run was interrupted and resumed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch

from .labelers.base import Labeler, References
from .version import __version__

__all__ = [
    "label_dataset",
    "load_labeled_dataset",
    "load_references",
    "read_manifest",
    "shard_seed",
    "shard_generator",
    "ConfigMismatchError",
    "IncompleteLabelingError",
    "DistributedSetupError",
    "MANIFEST_NAME",
    "REFERENCES_NAME",
]

PathLike = Union[str, os.PathLike]

MANIFEST_NAME = "manifest.json"
REFERENCES_NAME = "references.safetensors"
_SHARDS_DIR = "shards"
_ABORTED_DIR = "aborted"
_SHARD_RECORD = "shard.json"
_FORMAT = "db3-labeled-dataset"
_FORMAT_VERSION = 1
_MASK64 = (1 << 64) - 1


class ConfigMismatchError(ValueError):
    """Raised when ``out_dir`` holds a run made with different settings than the current call."""


class IncompleteLabelingError(RuntimeError):
    """Raised by :func:`load_labeled_dataset` when some shards are not finished yet."""


class DistributedSetupError(RuntimeError):
    """Raised when the launcher started several processes but accelerate sees only one."""


# ---------------------------------------------------------------------- determinism
def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser: a fixed integer bijection with good avalanche. Python's hash() is
    # salted per process for str and not part of any stability promise, so it cannot be used.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def shard_seed(seed: int, shard: int) -> int:
    """The generator seed of shard ``shard`` in a run seeded with ``seed``.

    Args:
        seed: the run's seed (any Python int; negative values wrap to 64 bits).
        shard: shard number, ``0``-based.

    Returns:
        A non-negative 63-bit int, a pure function of ``(seed, shard)`` (same on every machine).
    """
    # Mixing the seed first keeps (seed, k) and (seed + 1, k - 1) from colliding.
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(shard) & _MASK64)) >> 1


def shard_generator(seed: int, shard: int) -> torch.Generator:
    """Returns the CPU ``torch.Generator`` that :func:`label_dataset` hands the labeler for shard ``shard``."""
    return torch.Generator(device="cpu").manual_seed(shard_seed(seed, shard))


# ---------------------------------------------------------------------- small file helpers
def _write_json_atomic(path: Path, obj: Any) -> None:
    # Write-then-rename: a reader (or a restart after a kill) sees the old file or the new one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _canonical(obj: Any) -> Any:
    # Through JSON and back, so tuples/lists and numpy scalars compare the way they are stored.
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _digest(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        # Reinterpret as bytes so every dtype (bfloat16 included) hashes without a copy through numpy.
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def _flat_diff(old: Any, new: Any, prefix: str = "") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: List[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                keys.append(name)
            else:
                keys.extend(_flat_diff(old[key], new[key], name + "."))
        return keys
    return [] if old == new else [prefix.rstrip(".")]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    # save_to_disk / load_from_disk draw their own bars; one bar per shard would bury ours.
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------------- accelerate
def _resolve_state(accelerator: Any) -> Any:
    """Returns the object with ``num_processes``/``process_index``/``wait_for_everyone``, or ``None``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    state = accelerator
    if state is None:
        from accelerate.state import PartialState
        from accelerate.utils import parse_flag_from_env

        if PartialState._shared_state or world_size > 1:
            # PartialState reads no ACCELERATE_USE_CPU itself (only Accelerator does), so forward it.
            state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state is not None and world_size > 1 and int(state.num_processes) == 1:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but accelerate set up a single process (distributed type "
            f"{getattr(state, 'distributed_type', '?')}), so every process would label every shard. "
            f"On CPU-only machines launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
            f"--num_processes {world_size} ...` (or pass Accelerator(cpu=True))."
        )
    return state


class _SingleProcess:
    num_processes = 1
    process_index = 0
    is_main_process = True

    @staticmethod
    def wait_for_everyone() -> None:
        return None


# ---------------------------------------------------------------------- disk state
def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _scan_shards(out_dir: Path, digest: str) -> Dict[int, Dict[str, Any]]:
    """Finished shards on disk (a shard folder exists only once renamed into place, record included)."""
    found: Dict[int, Dict[str, Any]] = {}
    root = out_dir / _SHARDS_DIR
    if not root.is_dir():
        return found
    for path in sorted(root.glob("shard-*")):
        record_path = path / _SHARD_RECORD
        if not record_path.is_file():
            continue
        record = _read_json(record_path)
        if record.get("config_digest") != digest:
            raise ConfigMismatchError(
                f"{path} was written with different settings (config digest {record.get('config_digest')!r}, "
                f"current {digest!r}); use a new out_dir or delete the old one"
            )
        found[int(record["shard"])] = record
    return found


def _aborted_queries(out_dir: Path, digest: str) -> int:
    root = out_dir / _ABORTED_DIR
    if not root.is_dir():
        return 0
    total = 0
    for path in root.glob("*.json"):
        record = _read_json(path)
        if record.get("config_digest") == digest:
            total += int(record.get("queries", 0))
    return total


def _record_aborted(out_dir: Path, what: str, queries: int, digest: str, rank: int, err: BaseException) -> None:
    root = out_dir / _ABORTED_DIR
    root.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(
        root / f"{what}-p{rank}-{time.time_ns()}.json",
        {"what": what, "queries": int(queries), "config_digest": digest, "error": repr(err)[:500]},
    )


def read_manifest(out_dir: PathLike) -> Dict[str, Any]:
    """Reads ``out_dir/manifest.json``.

    Args:
        out_dir: a folder written by :func:`label_dataset`.

    Returns:
        The manifest dict.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: {str(out_dir)!r} is not a label_dataset output folder")
    manifest = _read_json(path)
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a {_FORMAT} manifest")
    return manifest


def _save_references(out_dir: Path, refs: References, meta: Dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path = out_dir / REFERENCES_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tensors = {"images": refs.images.detach().cpu().contiguous(), "labels": refs.labels.detach().cpu().long().contiguous()}
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    os.replace(tmp, path)


def _read_references(path: Path) -> Tuple[References, Dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
        images, labels = fh.get_tensor("images"), fh.get_tensor("labels")
    # The queries field is what checking them cost once; passing References means "already checked".
    return References(images, labels, int(meta.get("check_queries", 0))), meta


def load_references(out_dir: PathLike) -> References:
    """Loads the teacher-checked references a :func:`label_dataset` run saved.

    Args:
        out_dir: the run's output folder.

    Returns:
        :class:`~db3_timm.labelers.base.References` (kept images, teacher labels, check queries); passing it
        to ``labeler.label`` reproduces a shard without querying the references again.
    """
    path = Path(out_dir) / REFERENCES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: the run used no references or has not checked them yet")
    return _read_references(path)[0]


# ---------------------------------------------------------------------- datasets I/O
def _float_name(dtype: torch.dtype) -> str:
    # float64 is kept as is; half types widen to float32 exactly.
    return "float64" if dtype == torch.float64 else "float32"


def _shard_dataset(index: torch.Tensor, images: torch.Tensor, soft: Any) -> Any:
    import datasets
    from datasets import Array3D, Features, Value

    list_type = getattr(datasets, "List", None) or datasets.Sequence  # List is datasets>=4's name
    num_classes = int(soft.distances.shape[1])
    d_name, z_name, x_name = _float_name(soft.distances.dtype), _float_name(soft.logits.dtype), _float_name(images.dtype)
    features = Features(
        {
            "index": Value("int64"),
            "image": Array3D(shape=tuple(int(s) for s in images.shape[1:]), dtype=x_name),
            "label": Value("int64"),
            "distances": list_type(Value(d_name), length=num_classes),
            "soft_logits": list_type(Value(z_name), length=num_classes),
            "queries": Value("int64"),
        }
    )
    np_dtype = {"float32": torch.float32, "float64": torch.float64}
    columns = {
        "index": index.cpu().long().numpy(),
        "image": images.detach().cpu().to(np_dtype[x_name]).contiguous().numpy(),
        "label": soft.labels.detach().cpu().long().numpy(),
        "distances": soft.distances.detach().cpu().to(np_dtype[d_name]).contiguous().numpy(),
        "soft_logits": soft.logits.detach().cpu().to(np_dtype[z_name]).contiguous().numpy(),
        "queries": soft.queries.detach().cpu().long().numpy(),
    }
    return datasets.Dataset.from_dict(columns, features=features)


def _write_shard(out_dir: Path, k: int, dataset: Any, record: Dict[str, Any], process_index: int) -> None:
    root = out_dir / _SHARDS_DIR
    final = root / _shard_name(k)
    tmp = root / f".tmp-{_shard_name(k)}-p{process_index}-{uuid.uuid4().hex[:8]}"
    with _quiet_datasets():
        dataset.save_to_disk(str(tmp))
    # The record goes in before the rename, so a folder under its final name is always complete.
    _write_json_atomic(tmp / _SHARD_RECORD, record)
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / _SHARD_RECORD).is_file():  # finished meanwhile by someone else: same bits, keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


# ---------------------------------------------------------------------- the run
def _resolve_reference_input(
    references: Any, dataset_labels: Optional[torch.Tensor]
) -> Tuple[Optional[str], Optional[torch.Tensor], Optional[torch.Tensor], Optional[References]]:
    """Returns ``(kind, candidate images, candidate labels, prechecked)`` for the ``references`` argument."""
    if references is None:
        if dataset_labels is not None:
            raise ValueError("dataset_labels are the labels of the reference images; pass references= with them")
        return None, None, None, None
    if isinstance(references, References):
        if dataset_labels is not None:
            raise ValueError("references are already teacher-checked (References); drop dataset_labels")
        return "checked", None, None, references
    if isinstance(references, torch.Tensor):
        return "candidates", references, dataset_labels, None
    if isinstance(references, (tuple, list)) and len(references) == 2:
        if dataset_labels is not None:
            raise ValueError("pass reference labels either inside references=(images, labels) or as dataset_labels, not both")
        return "candidates", references[0], torch.as_tensor(references[1]), None
    raise TypeError(
        f"references must be None, a References, an image tensor or (images, labels), got {type(references).__name__}"
    )


def _config(
    labeler: Labeler, images: torch.Tensor, seed: int, shard_size: int, ref_kind: Optional[str], ref_fp: Optional[str]
) -> Dict[str, Any]:
    return _canonical(
        {
            "format_version": _FORMAT_VERSION,
            "labeler": labeler.config(),
            "seed": int(seed),
            "num_samples": int(images.shape[0]),
            "shard_size": int(shard_size),
            "image_shape": list(images.shape[1:]),
            "image_dtype": _float_name(images.dtype),
            "data_fingerprint": _tensor_fingerprint(images),
            "references": ref_kind,
            "references_fingerprint": ref_fp,
        }
    )


def _check_config(manifest: Dict[str, Any], config: Dict[str, Any], out_dir: Path) -> None:
    old = manifest.get("config", {})
    if old != config:
        keys = _flat_diff(old, config)
        details = "; ".join(f"{k}: {_lookup(old, k)!r} -> {_lookup(config, k)!r}" for k in keys[:8])
        raise ConfigMismatchError(
            f"{str(out_dir)!r} holds a run with different settings ({', '.join(keys)} differ: {details}); "
            f"rerun with the original settings to resume, or choose a new out_dir"
        )


def _lookup(config: Dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def _manifest(
    config: Dict[str, Any],
    digest: str,
    num_shards: int,
    shards: Dict[int, Dict[str, Any]],
    ref_meta: Optional[Dict[str, Any]],
    aborted: int,
    teacher: str,
    num_processes: int,
) -> Dict[str, Any]:
    finished = [shards[k] for k in sorted(shards)]
    ref_queries = int(ref_meta["check_queries"]) if ref_meta else 0
    shard_queries = sum(int(r["queries"]) for r in finished)
    return {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "db3_timm_version": __version__,
        "config": config,
        "config_digest": digest,
        # Informational, not compared on resume: the same teacher may live at another path.
        "teacher": teacher,
        "num_processes": num_processes,
        "num_shards": num_shards,
        "num_finished_shards": len(finished),
        "complete": len(finished) == num_shards,
        "references": ref_meta,
        "queries": {
            "reference_check": ref_queries,
            "shards": shard_queries,
            # Spent by shards that raised part-way (their labels were discarded).
            "aborted": aborted,
            "total": ref_queries + shard_queries + aborted,
        },
        "shards": [
            {k: r[k] for k in ("shard", "start", "stop", "path", "queries", "sample_queries", "generator_seed")}
            for r in finished
        ],
    }


def label_dataset(
    labeler: Labeler,
    images: torch.Tensor,
    out_dir: PathLike,
    *,
    references: Any = None,
    dataset_labels: Optional[torch.Tensor] = None,
    teacher_labels: Optional[torch.Tensor] = None,
    shard_size: int = 512,
    seed: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> Any:
    """Soft-labels every image with ``labeler`` into resumable shards of a Hugging Face dataset.

    Finished shards are skipped when the call is repeated with the same ``out_dir`` (a killed run
    loses at most the shards in flight); references are checked with the teacher once and saved.
    With several processes (an ``accelerate`` ``Accelerator``/``PartialState``), process ``p`` labels
    shards ``k`` with ``k % num_processes == p``; the result is identical for any process count.

    Args:
        labeler: a DB3 labeler (``db3_timm.create_labeler(name, oracle, ...)``).
        images: ``(N, C, H, W)`` float images in ``[0, 1]`` (kept on the CPU; the oracle moves batches
            to the teacher's device).
        out_dir: output folder (created); holds ``manifest.json``, ``references.safetensors`` and ``shards/``.
        references: reference images for the labeler: a tensor (with ``dataset_labels``), ``(images, labels)``
            or an already checked :class:`~db3_timm.labelers.base.References`. Candidates are checked with
            the teacher once (``labeler.check_references``), by the main process.
        dataset_labels: the dataset labels of a ``references`` tensor (disagreeing references are dropped).
        teacher_labels: ``(N,)`` the teacher's labels of ``images`` when it has answered them already (pseudo
            samples and start pools are labelled as they are drawn): saves one query per image.
        shard_size: rows per shard (the unit of resumption and of work split).
        seed: the run seed; shard ``k`` uses :func:`shard_generator` ``(seed, k)``.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState``; by default an initialised
            ``PartialState`` (or ``WORLD_SIZE > 1``) is picked up, else a single process runs.
        progress: show a tqdm bar (main process only) with samples, queries/s and the budget left.

    Returns:
        The whole labelled ``datasets.Dataset`` ordered by ``index`` (the same on every process).

    Raises:
        ConfigMismatchError: ``out_dir`` holds a run with other settings (the message names the keys).
        DistributedSetupError: ``WORLD_SIZE > 1`` but accelerate set up a single process.
        QueryBudgetExceeded: the oracle's budget ran out; finished shards are kept, rerun to resume.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; nothing to label")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if teacher_labels is not None:
        if not isinstance(teacher_labels, torch.Tensor) or teacher_labels.shape != images.shape[:1] \
                or teacher_labels.is_floating_point():
            raise ValueError(f"teacher_labels must be an integer tensor of shape ({images.shape[0]},), got "
                             f"{getattr(teacher_labels, 'dtype', type(teacher_labels).__name__)} of shape "
                             f"{tuple(getattr(teacher_labels, 'shape', ()))}")
        teacher_labels = teacher_labels.detach().cpu().long()
    images = images.detach().cpu()
    out = Path(out_dir)
    state = _resolve_state(accelerator) or _SingleProcess()
    num_processes, rank = int(state.num_processes), int(state.process_index)
    is_main = rank == 0

    ref_kind, cand_images, cand_labels, prechecked = _resolve_reference_input(references, dataset_labels)
    if ref_kind == "checked":
        ref_fp = _tensor_fingerprint(prechecked.images, prechecked.labels.long())
    elif ref_kind == "candidates":
        extra = () if cand_labels is None else (cand_labels.long(),)
        ref_fp = _tensor_fingerprint(cand_images, *extra)
    else:
        ref_fp = None
    config = _config(labeler, images, seed, shard_size, ref_kind, ref_fp)
    if teacher_labels is not None:  # only then, so that earlier runs' configs still match
        config["teacher_labels_fingerprint"] = _tensor_fingerprint(teacher_labels)
    digest = _digest(config)
    n = int(images.shape[0])
    num_shards = math.ceil(n / shard_size)
    oracle = labeler.oracle
    teacher = str(getattr(oracle, "name", type(oracle).__name__))

    # Every process checks the config itself, before any barrier, so a mismatch cannot deadlock.
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file():
        _check_config(read_manifest(out), config, out)

    # ---- references: checked once by the main process, saved, then read by everyone.
    refs: Optional[References] = None
    ref_meta: Optional[Dict[str, Any]] = None
    ref_path = out / REFERENCES_NAME
    if is_main:
        (out / _SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        for stale in (out / _SHARDS_DIR).glob(".tmp-*"):  # left by a killed run; never renamed into place
            shutil.rmtree(stale, ignore_errors=True)
        if ref_kind is not None:
            if ref_path.is_file():
                refs, ref_meta = _read_references(ref_path)
                if ref_meta.get("config_digest") != digest:
                    raise ConfigMismatchError(
                        f"{str(ref_path)!r} belongs to a run with different settings; use a new out_dir"
                    )
            else:
                if ref_kind == "checked":
                    refs, spent = prechecked, 0
                else:
                    before = oracle.queries
                    try:
                        refs = labeler.check_references(cand_images, cand_labels)
                    except BaseException as err:
                        _record_aborted(out, "references", oracle.queries - before, digest, rank, err)
                        raise
                    spent = oracle.queries - before
                per_class = torch.bincount(refs.labels.long().cpu(), minlength=labeler.num_classes).tolist()
                ref_meta = {
                    "file": REFERENCES_NAME,
                    "config_digest": digest,
                    "prechecked": ref_kind == "checked",
                    "candidates": int(refs.queries if ref_kind == "checked" else cand_images.shape[0]),
                    "kept": int(refs.images.shape[0]),
                    "kept_per_class": per_class,
                    "check_queries": int(spent),
                }
                _save_references(out, refs, ref_meta)
        aborted = _aborted_queries(out, digest)
        _write_json_atomic(
            manifest_path,
            _manifest(config, digest, num_shards, _scan_shards(out, digest), ref_meta, aborted, teacher, num_processes),
        )
    state.wait_for_everyone()
    if not is_main and ref_kind is not None:
        refs, ref_meta = _read_references(ref_path)

    # ---- shards
    done = _scan_shards(out, digest)
    start_done = set(done)
    mine = [k for k in range(num_shards) if k % num_processes == rank and k not in done]
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n,
            initial=sum(int(r["num_samples"]) for r in done.values()),
            unit="img",
            desc=f"db3 label ({getattr(labeler, 'name', 'labeler')})",
            dynamic_ncols=True,
        )
    t0 = time.monotonic()
    q0 = oracle.queries
    original_log = getattr(oracle, "query_log", None)
    last_refresh = [t0]  # the first rate is shown after 0.5 s, not from a near-zero elapsed time

    def run_queries() -> int:
        # Queries of shards other processes finished in this run plus this process's live count.
        others = sum(int(r["queries"]) for k, r in done.items() if k not in start_done and int(r["process"]) != rank)
        return others + (oracle.queries - q0)

    def refresh(force: bool = False) -> None:
        now = time.monotonic()
        if bar is None or (not force and now - last_refresh[0] < 0.5):
            return
        last_refresh[0] = now
        postfix = {"queries": run_queries(), "q/s": f"{run_queries() / max(now - t0, 1e-9):.1f}"}
        remaining = getattr(oracle, "remaining", None)
        if remaining is not None:
            postfix["budget_left"] = remaining
        bar.set_postfix(postfix, refresh=True)

    def log(batch: int, total: int) -> None:
        if original_log is not None:  # the caller's observer first: it may stop the run on purpose
            original_log(batch, total)
        refresh()

    if bar is not None:
        oracle.query_log = log  # chained for live postfix updates; restored below
    try:
        for k in mine:
            start, stop = k * shard_size, min((k + 1) * shard_size, n)
            g_seed = shard_seed(seed, k)
            before, t_shard = oracle.queries, time.monotonic()
            try:
                soft = labeler.label(
                    images[start:stop], refs, labels=None if teacher_labels is None else teacher_labels[start:stop],
                    generator=torch.Generator(device="cpu").manual_seed(g_seed),
                )
                index = torch.arange(start, stop, dtype=torch.long)
                spent = oracle.queries - before
                record = {
                    "shard": k,
                    "start": start,
                    "stop": stop,
                    "num_samples": stop - start,
                    "path": f"{_SHARDS_DIR}/{_shard_name(k)}",
                    "queries": int(spent),
                    "sample_queries": int(soft.queries.sum()),
                    "reference_queries": int(soft.reference_queries),
                    "generator_seed": g_seed,
                    "process": rank,
                    "wall_s": round(time.monotonic() - t_shard, 3),
                    "config_digest": digest,
                    "info": _canonical(soft.info),
                }
                _write_shard(out, k, _shard_dataset(index, images[start:stop], soft), record, rank)
            except BaseException as err:
                # Whatever the shard spent before failing is gone but was paid for: record it.
                _record_aborted(out, _shard_name(k), oracle.queries - before, digest, rank, err)
                if is_main:
                    _write_json_atomic(
                        manifest_path,
                        _manifest(config, digest, num_shards, _scan_shards(out, digest), ref_meta,
                                  _aborted_queries(out, digest), teacher, num_processes),
                    )
                raise
            if is_main:
                done = _scan_shards(out, digest)  # picks up the other processes' shards as well
                _write_json_atomic(
                    manifest_path,
                    _manifest(config, digest, num_shards, done, ref_meta, _aborted_queries(out, digest),
                              teacher, num_processes),
                )
                if bar is not None:
                    bar.n = sum(int(r["num_samples"]) for r in done.values())
                    refresh(force=True)
    finally:
        if bar is not None:
            oracle.query_log = original_log
    state.wait_for_everyone()
    if is_main:
        done = _scan_shards(out, digest)
        _write_json_atomic(
            manifest_path,
            _manifest(config, digest, num_shards, done, ref_meta, _aborted_queries(out, digest), teacher, num_processes),
        )
        if bar is not None:
            bar.n = sum(int(r["num_samples"]) for r in done.values())
            refresh(force=True)
            bar.close()
    state.wait_for_everyone()
    return load_labeled_dataset(out)


def load_labeled_dataset(out_dir: PathLike) -> Any:
    """Loads the finished shards of a :func:`label_dataset` run as one dataset ordered by ``index``.

    Args:
        out_dir: the run's output folder.

    Returns:
        The ``datasets.Dataset`` (memory-mapped from the shard files).

    Raises:
        IncompleteLabelingError: some shards are missing (rerun the same command to resume).
    """
    import datasets

    out = Path(out_dir)
    manifest = read_manifest(out)
    num_shards = int(manifest["num_shards"])
    # The disk is the truth: a shard finished by another process after the last manifest write counts.
    found = _scan_shards(out, manifest["config_digest"])
    missing = [k for k in range(num_shards) if k not in found]
    if missing:
        shown = ", ".join(str(k) for k in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise IncompleteLabelingError(
            f"{str(out)!r} is incomplete: {len(missing)} of {num_shards} shards missing (shards {shown}); "
            f"rerun the same command (same data, labeler settings and seed) with this out_dir to resume"
        )
    with _quiet_datasets():
        parts = [datasets.load_from_disk(str(out / found[k]["path"])) for k in range(num_shards)]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
