"""Whole-dataset soft-labelling: sharded, resumable, split across processes, readable by ``datasets``.

:func:`label_dataset` runs a DB3 labeler over every image and writes the answers as a saved
``datasets.DatasetDict`` (see :mod:`db3_timm._disk`) plus its bookkeeping::

    out_dir/
      dataset_dict.json, train/, README.md   # the standard dataset, complete once every shard is done
      manifest.json                          # config, teacher, shards finished, query totals (atomic rewrites)
      references.safetensors                 # the teacher-checked references (kept images + teacher labels)
      shards/shard-00000.json                # one record per finished shard: rows, queries, seed, checksum
      aborted/                               # queries spent by shards that raised (so totals stay honest)

Columns, one row per input image, ordered by ``index``:

* ``index`` (int64): position in the input ``images``.
* ``image`` (``Array3D`` ``(C, H, W)``, float32): the exact pixels the teacher saw. Float rather than an
  8-bit ``datasets.Image``: sources such as scikit-learn's digits or resized images are not 8-bit, and
  rounding would change the input the soft labels belong to (:func:`~db3_timm.transfer.export.export_parquet`
  writes PNGs for tools that need images).
* ``label`` (``ClassLabel``): the teacher's label.
* ``distances`` / ``soft_logits`` (``num_classes`` floats): boundary distances (``inf`` where none was
  found) and soft-label logits.
* ``queries`` (int64): oracle queries spent on the sample (its own label query included).

Shard ``k`` holds rows ``[k * shard_size, (k + 1) * shard_size)`` and is labelled with the generator
:func:`shard_generator` ``(seed, k)``, so the result does not depend on how many processes ran, in which
order, or how often the run was interrupted and resumed.
"""
from __future__ import annotations

import json
import warnings
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .._checks import check_class_names
from .._distributed import process_state
from ..data import ImageStream
from .._io import (ConfigMismatchError, PathLike, canonical, config_diff, digest, read_json, run_lock,
                   save_safetensors_atomic, tensor_fingerprint, write_json_atomic)
from ..labelers.base import Labeler, References
from ..version import __version__
from .._disk import SPLIT, ShardedDataset, dataset_card, is_dataset_dict, quiet_datasets

__all__ = [
    "label_dataset",
    "load_labeled_dataset",
    "load_references",
    "read_manifest",
    "shard_seed",
    "shard_generator",
    "label_features",
    "default_shard_size",
    "ConfigMismatchError",
    "IncompleteLabelingError",
    "MANIFEST_NAME",
    "REFERENCES_NAME",
    "FORMAT",
]

MANIFEST_NAME = "manifest.json"
REFERENCES_NAME = "references.safetensors"
FORMAT = "db3-labeled-dataset"
_FORMAT_VERSION = 2
_ABORTED = "aborted"
_MASK64 = (1 << 64) - 1


class IncompleteLabelingError(RuntimeError):
    """Raised by :func:`load_labeled_dataset` when some shards are not finished yet."""


# ---------------------------------------------------------------------- determinism
def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser: a fixed integer bijection with good avalanche. Python's hash() is
    # salted per process for str and not part of any stability promise, so it cannot be used.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def shard_seed(seed: int, shard: int) -> int:
    """Returns the generator seed of shard ``shard`` in a run seeded with ``seed``: a non-negative 63-bit int,
    a pure function of ``(seed, shard)`` (negative seeds wrap to 64 bits)."""
    # Mixing the seed first keeps (seed, k) and (seed + 1, k - 1) from colliding.
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(shard) & _MASK64)) >> 1


def shard_generator(seed: int, shard: int) -> torch.Generator:
    """Returns the CPU ``torch.Generator`` that :func:`label_dataset` hands the labeler for shard ``shard``."""
    return torch.Generator(device="cpu").manual_seed(shard_seed(seed, shard))


# ---------------------------------------------------------------------- format
def label_features(image_shape: Sequence[int], num_classes: int, class_names: Optional[Sequence[str]] = None) -> Any:
    """Returns the ``datasets.Features`` of a labelled dataset (see the module docstring)."""
    import datasets
    from datasets import Array3D, ClassLabel, Features, Value

    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return Features({
        "index": Value("int64"),
        "image": Array3D(shape=tuple(int(s) for s in image_shape), dtype="float32"),
        "label": ClassLabel(names=names),
        "distances": datasets.List(Value("float32"), length=num_classes),
        "soft_logits": datasets.List(Value("float32"), length=num_classes),
        "queries": Value("int64"),
    })


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _shard_columns(index: torch.Tensor, images: torch.Tensor, soft: Any) -> Dict[str, Any]:
    return {
        "index": index.long().numpy(),
        "image": images.detach().cpu().float().contiguous().numpy(),
        "label": soft.labels.detach().cpu().long().numpy(),
        "distances": soft.distances.detach().cpu().float().contiguous().numpy(),
        "soft_logits": soft.logits.detach().cpu().float().contiguous().numpy(),
        "queries": soft.queries.detach().cpu().long().numpy(),
    }


def read_manifest(out_dir: PathLike) -> Dict[str, Any]:
    """Returns the manifest of a :func:`label_dataset` output folder (``out_dir/manifest.json``)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: {str(out_dir)!r} is not a db3 dataset folder")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a {FORMAT} manifest")
    return manifest


# ---------------------------------------------------------------------- references
def _read_references(path: Path) -> Tuple[References, Dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            images, labels = fh.get_tensor("images"), fh.get_tensor("labels")
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(f"references file {str(path)!r} is damaged ({type(err).__name__}: {err}); delete it "
                         f"and rerun (the references are checked with the teacher again)") from None
    # The queries field is what checking them cost once; passing References means "already checked".
    return References(images, labels, int(meta.get("check_queries", 0))), meta


def load_references(out_dir: PathLike) -> References:
    """Returns the teacher-checked :class:`~db3_timm.labelers.base.References` a :func:`label_dataset` run saved;
    passing them to ``labeler.label`` reproduces a shard without querying the references again."""
    path = Path(out_dir) / REFERENCES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: the run used no references or has not checked them yet")
    return _read_references(path)[0]


def _reference_input(references: Any, dataset_labels: Optional[torch.Tensor]):
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
    raise TypeError(f"references must be None, a References, an image tensor or (images, labels), got {type(references).__name__}")


def default_shard_size(image_shape: Sequence[int]) -> int:
    """Rows per shard when none is given: 512 small images, fewer big ones, so that one shard's pixels (and the
    labeler's per-target copies of them) stay near 32 MB: 512 rows at 28x28, 55 at 3x224x224."""
    return max(8, min(512, (1 << 23) // max(1, math.prod(int(s) for s in image_shape))))


def _check_inputs(images: Any, teacher_labels: Any, shard_size: Any) -> None:
    if not isinstance(images, ImageStream) and (not isinstance(images, torch.Tensor) or images.dim() != 4
                                                or not images.is_floating_point()):
        raise ValueError(f"images must be a float tensor (N, C, H, W) or an ImageStream, got "
                         f"{getattr(images, 'shape', type(images))}")
    if len(images) == 0:
        raise ValueError("images is empty; nothing to label")
    if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1):
        raise ValueError(f"shard_size must be a positive int or None, got {shard_size!r}")
    if teacher_labels is not None and (not isinstance(teacher_labels, torch.Tensor) or teacher_labels.is_floating_point()
                                       or tuple(teacher_labels.shape) != (len(images),)):
        raise ValueError(f"teacher_labels must be an integer tensor of shape ({len(images)},), got "
                         f"{getattr(teacher_labels, 'dtype', type(teacher_labels).__name__)} of shape "
                         f"{tuple(getattr(teacher_labels, 'shape', ()))}")


# ---------------------------------------------------------------------- the run
class _LabelRun:
    """One :func:`label_dataset` call: its settings, its folder and this process's part of the work."""

    def __init__(self, labeler: Labeler, images: ImageStream, out: Path, references: Any, dataset_labels: Any,
                 teacher_labels: Optional[torch.Tensor], shard_size: int, seed: int, class_names: Any,
                 progress: bool = False):
        self.labeler, self.images, self.out = labeler, images, out
        self.teacher_labels = teacher_labels
        self.shard_size, self.seed = shard_size, int(seed)
        self.n = len(images)
        self.num_shards = math.ceil(self.n / shard_size)
        self.ref_kind, self.cand_images, self.cand_labels, self.prechecked = _reference_input(references, dataset_labels)
        self.features = label_features(images.image_shape, labeler.num_classes, class_names)
        self.progress = progress
        self.teacher = str(getattr(labeler.oracle, "name", type(labeler.oracle).__name__))
        # Compared on resume: a run continued with another teacher would mix two teachers' labels.
        self.teacher_identity = str(getattr(labeler.oracle, "identity", self.teacher))
        self.config = self._config()
        self.digest = digest(self.config)
        self.shards = ShardedDataset(out, self.features, self.digest)

    def _config(self) -> Dict[str, Any]:
        if self.ref_kind == "checked":
            ref_fp = tensor_fingerprint(self.prechecked.images, self.prechecked.labels.long())
        elif self.ref_kind == "candidates":
            extra = () if self.cand_labels is None else (self.cand_labels.long(),)
            ref_fp = tensor_fingerprint(self.cand_images, *extra)
        else:
            ref_fp = None
        config = {"format_version": _FORMAT_VERSION, "labeler": self.labeler.config(), "seed": self.seed,
                  "num_samples": self.n, "shard_size": self.shard_size, "image_shape": list(self.images.image_shape),
                  "data_fingerprint": self.images.fingerprint(self.progress), "references": self.ref_kind,
                  "references_fingerprint": ref_fp, "teacher": self.teacher_identity,
                  "class_names": self.features["label"].names}
        if self.teacher_labels is not None:
            config["teacher_labels_fingerprint"] = tensor_fingerprint(self.teacher_labels)
        return canonical(config)

    def check_config(self) -> None:
        """Refuses to continue a run made with other settings (before any query, on every process)."""
        if (self.out / MANIFEST_NAME).is_file():
            old = read_manifest(self.out).get("config", {})
            if old != self.config:
                raise ConfigMismatchError(
                    f"{str(self.out)!r} holds a run with different settings ({config_diff(old, self.config)}); "
                    f"rerun with the original settings to resume, or choose a new out_dir")

    # ------------------------------------------------------------------ disk state
    def records(self, verify: bool = False) -> Dict[int, Dict[str, Any]]:
        """Finished shards by number (see :meth:`~db3_timm._disk.ShardedDataset.finished`)."""
        return {int(r["shard"]): r for r in self.shards.finished(verify).values()}

    def aborted_queries(self) -> int:
        total = 0
        for path in (self.out / _ABORTED).glob("*.json") if (self.out / _ABORTED).is_dir() else []:
            try:
                record = read_json(path, "aborted record")
                total += int(record["queries"]) if record.get("config_digest") == self.digest else 0
            except (ValueError, KeyError, TypeError):
                warnings.warn(f"ignoring the damaged record {path}", stacklevel=3)
        return total

    def record_aborted(self, what: str, queries: int, rank: int, err: BaseException) -> None:
        root = self.out / _ABORTED
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / f"{what}-p{rank}-{time.time_ns()}.json",
                          {"what": what, "queries": int(queries), "config_digest": self.digest, "error": repr(err)[:500]})

    def write_manifest(self, ref_meta: Optional[Dict[str, Any]], num_processes: int) -> Dict[int, Dict[str, Any]]:
        """Rewrites ``manifest.json`` from what is on disk; returns the finished shards."""
        done = self.records()
        finished = [done[k] for k in sorted(done)]
        ref_q = int(ref_meta["check_queries"]) if ref_meta else 0
        shard_q, aborted = sum(int(r["queries"]) for r in finished), self.aborted_queries()
        write_json_atomic(self.out / MANIFEST_NAME, {
            "format": FORMAT, "format_version": _FORMAT_VERSION, "db3_timm_version": __version__,
            "config": self.config, "config_digest": self.digest, "teacher": self.teacher,
            "num_processes": num_processes, "num_shards": self.num_shards, "num_finished_shards": len(finished),
            "num_rows": sum(int(r["rows"]) for r in finished), "complete": len(finished) == self.num_shards,
            "references": ref_meta,
            "queries": {"reference_check": ref_q, "shards": shard_q, "aborted": aborted,
                        "total": ref_q + shard_q + aborted},
            "shards": [{k: r[k] for k in ("shard", "start", "stop", "name", "queries", "sample_queries", "generator_seed")}
                       for r in finished],
        })
        return done

    # ------------------------------------------------------------------ work
    def prepare_references(self, rank: int) -> Tuple[Optional[References], Optional[Dict[str, Any]]]:
        """Main process: checks the candidate references with the teacher once and saves them."""
        path = self.out / REFERENCES_NAME
        if self.ref_kind is None:
            return None, None
        if path.is_file():
            refs, meta = _read_references(path)
            if meta.get("config_digest") != self.digest:
                raise ConfigMismatchError(f"{str(path)!r} belongs to a run with different settings; use a new out_dir")
            return refs, meta
        oracle = self.labeler.oracle
        if self.ref_kind == "checked":
            refs, spent = self.prechecked, 0
        else:
            before = oracle.queries
            try:
                refs = self.labeler.check_references(self.cand_images, self.cand_labels)
            except BaseException as err:
                self.record_aborted("references", oracle.queries - before, rank, err)
                raise
            spent = oracle.queries - before
        meta = {"file": REFERENCES_NAME, "config_digest": self.digest, "prechecked": self.ref_kind == "checked",
                "candidates": int(refs.queries if self.ref_kind == "checked" else self.cand_images.shape[0]),
                "kept": int(refs.images.shape[0]), "check_queries": int(spent),
                "kept_per_class": torch.bincount(refs.labels.long().cpu(), minlength=self.labeler.num_classes).tolist()}
        save_safetensors_atomic(path, {"images": refs.images, "labels": refs.labels.long()},
                                {k: json.dumps(v) for k, v in meta.items()})
        return refs, meta

    def label_shard(self, k: int, refs: Optional[References], rank: int) -> None:
        """Labels shard ``k`` and renames its Arrow file and record into place; records what a failure spent."""
        oracle = self.labeler.oracle
        start, stop = k * self.shard_size, min((k + 1) * self.shard_size, self.n)
        g_seed = shard_seed(self.seed, k)
        before, t0 = oracle.queries, time.monotonic()
        try:
            known = None if self.teacher_labels is None else self.teacher_labels[start:stop]
            images = self.images.read(start, stop)  # the only pixels of the split held at a time
            soft = self.labeler.label(images, refs, labels=known,
                                      generator=torch.Generator(device="cpu").manual_seed(g_seed))
            columns = _shard_columns(torch.arange(start, stop), images, soft)
            spent = int(oracle.queries - before)
            self.shards.commit(_shard_name(k), columns, shard=k, start=start, stop=stop, queries=spent,
                               sample_queries=int(soft.queries.sum()), reference_queries=int(soft.reference_queries),
                               generator_seed=g_seed, process=rank, wall_s=round(time.monotonic() - t0, 3),
                               info=canonical(soft.info))
        except BaseException as err:
            # Whatever the shard spent before failing is gone but was paid for: record it.
            self.record_aborted(_shard_name(k), oracle.queries - before, rank, err)
            raise

    def finish(self, done: Dict[int, Dict[str, Any]], manifest: Dict[str, Any]) -> None:
        """Writes the standard ``DatasetDict`` index files once every shard is there."""
        summary = (f"{self.n} images soft-labelled by a label-only teacher with the DB3 labeler "
                   f"`{self.config['labeler'].get('labeler')}` ({manifest['queries']['total']:,} teacher queries).")
        card = dataset_card("DB3 soft-labelled dataset", summary, [
            ("index", "int64", "position in the labelled images"),
            ("image", f"Array3D {tuple(self.images.image_shape)} float32", "the exact pixels the teacher saw, in [0, 1]"),
            ("label", "ClassLabel", "the teacher's label (a label-only query), not ground truth"),
            ("distances", "list of float32", "distance to the teacher's boundary toward each class (inf: none found)"),
            ("soft_logits", "list of float32", "DB3 soft-label logits z; train on softmax(z / T)"),
            ("queries", "int64", "teacher queries spent on the row")],
            json.dumps({"teacher": self.teacher, "labeler": self.config["labeler"], "queries": manifest["queries"]}, indent=2))
        self.shards.finish([_shard_name(k) for k in range(self.num_shards)], card)


class _Progress:
    """One tqdm bar on the main process: images labelled, queries spent, queries/s and the budget left."""

    def __init__(self, oracle: Any, total: int, initial: int, desc: str, enabled: bool):
        self.oracle, self.bar, self.t0, self.q0, self.last = oracle, None, time.monotonic(), oracle.queries, 0.0
        self.original_log = getattr(oracle, "query_log", None)
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True)
            oracle.query_log = self._log  # chained for live postfix updates; restored by close()

    def _log(self, batch: int, total: int) -> None:
        if self.original_log is not None:  # the caller's observer first: it may stop the run on purpose
            self.original_log(batch, total)
        self.refresh()

    def refresh(self, done_rows: Optional[int] = None, force: bool = False) -> None:
        if self.bar is None:
            return
        if done_rows is not None:
            self.bar.n = done_rows
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        spent = self.oracle.queries - self.q0
        postfix = {"queries": spent, "q/s": f"{spent / max(now - self.t0, 1e-9):.1f}"}
        if getattr(self.oracle, "remaining", None) is not None:
            postfix["budget_left"] = self.oracle.remaining
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.oracle.query_log = self.original_log
            self.bar.close()


def _label_all(run: _LabelRun, state: Any, progress: bool) -> None:
    """Every process's part of a run: references (main process), its shards, the manifest and the index."""
    num_processes, rank = int(state.num_processes), int(state.process_index)
    refs, ref_meta = None, None
    if rank == 0:
        run.shards.remove_stale()
        refs, ref_meta = run.prepare_references(rank)
        run.records(verify=True)  # damaged shards lose their record and are labelled again
        run.write_manifest(ref_meta, num_processes)
    state.wait_for_everyone()
    if rank != 0 and run.ref_kind is not None:
        refs, ref_meta = _read_references(run.out / REFERENCES_NAME)
    done = run.records()
    mine = [k for k in range(run.num_shards) if k % num_processes == rank and k not in done]
    bar = _Progress(run.labeler.oracle, run.n, sum(int(r["rows"]) for r in done.values()),
                    f"db3 label ({run.labeler.name})", progress and rank == 0)
    try:
        for k in mine:
            try:
                run.label_shard(k, refs, rank)
            finally:
                if rank == 0:
                    done = run.write_manifest(ref_meta, num_processes)
                    bar.refresh(sum(int(r["rows"]) for r in done.values()), force=True)
    finally:
        bar.close()
    state.wait_for_everyone()
    if rank == 0:
        done = run.write_manifest(ref_meta, num_processes)
        if len(done) == run.num_shards:
            run.finish(done, read_manifest(run.out))
    state.wait_for_everyone()


def label_dataset(
    labeler: Labeler,
    images: Union[torch.Tensor, ImageStream],
    out_dir: PathLike,
    *,
    references: Any = None,
    dataset_labels: Optional[torch.Tensor] = None,
    teacher_labels: Optional[torch.Tensor] = None,
    shard_size: Optional[int] = None,
    seed: int = 0,
    accelerator: Any = None,
    progress: bool = True,
    class_names: Optional[Sequence[str]] = None,
) -> Any:
    """Soft-labels every image with ``labeler`` into a resumable, sharded Hugging Face dataset.

    Finished shards are skipped when the call is repeated with the same ``out_dir`` (a killed run loses at
    most the shards in flight; damaged shards are detected by checksum and labelled again); references
    are checked with the teacher once and saved. With several processes (an ``accelerate`` ``Accelerator``
    / ``PartialState``), process ``p`` labels shards ``k`` with ``k % num_processes == p``; the result is
    identical for any process count.

    Args:
        labeler: a DB3 labeler (``db3_timm.create_labeler(name, oracle, ...)``).
        images: ``(N, C, H, W)`` float images in ``[0, 1]`` (kept on the CPU; the oracle moves batches), or an
            :class:`~db3_timm.data.ImageStream` (``open_image_dataset``): then only one shard's pixels are held at
            a time, and the split is read once up front for its fingerprint (a resumed run must see the same
            pixels). Both give the same result for the same pixels.
        out_dir: output folder (created); see the module docstring for its layout.
        references: reference images for the labeler: a tensor (with ``dataset_labels``), ``(images, labels)``
            or an already checked :class:`~db3_timm.labelers.base.References`. Candidates are checked with
            the teacher once, by the main process.
        dataset_labels: the dataset labels of a ``references`` tensor (disagreeing references are dropped).
        teacher_labels: ``(N,)`` the teacher's labels of ``images`` when it has answered them already (pseudo
            samples and start pools are labelled as they are drawn): saves one query per image.
        shard_size: rows per shard (the unit of resumption and of work split); default
            :func:`default_shard_size` of the image shape (512 for 28x28 images, 55 for 3x224x224).
        seed: the run seed; shard ``k`` uses :func:`shard_generator` ``(seed, k)``.
        accelerator: an ``accelerate.Accelerator`` or ``PartialState`` (default: see
            :func:`~db3_timm._distributed.process_state`).
        progress: show a tqdm bar (main process only) with images, queries, queries/s and the budget left.
        class_names: names of the classes for the ``label`` column (default: the teacher's
            :attr:`~db3_timm.LabelOracle.class_names`, else ``"0"``, ``"1"``, ...).

    Returns:
        The whole labelled ``datasets.Dataset`` ordered by ``index`` (the same on every process).

    Raises:
        ConfigMismatchError: ``out_dir`` holds a run with other settings (the message names the keys).
        RunLockedError: another run is labelling into ``out_dir`` right now (the message names it).
        DistributedSetupError: ``WORLD_SIZE > 1`` but accelerate set up a single process.
        QueryBudgetExceeded: the oracle's budget ran out; finished shards are kept, rerun to resume.
    """
    _check_inputs(images, teacher_labels, shard_size)
    if class_names is None:
        class_names = getattr(labeler.oracle, "class_names", None)
    class_names = check_class_names(class_names, labeler.num_classes)
    if teacher_labels is not None:
        teacher_labels = teacher_labels.detach().cpu().long()
    state = process_state(accelerator)
    # A stream is read once up front for its fingerprint: that pass gets a bar (tensors are hashed at once).
    read_bar = isinstance(images, ImageStream) and progress and state.is_main_process
    stream = images if isinstance(images, ImageStream) else ImageStream(images.detach().cpu())
    shard_size = default_shard_size(stream.image_shape) if shard_size is None else shard_size
    run = _LabelRun(labeler, stream, Path(out_dir), references, dataset_labels, teacher_labels,
                    shard_size, seed, class_names, read_bar)
    # Every process checks the config itself, before any barrier, so a mismatch cannot deadlock.
    run.check_config()
    with run_lock(run.out, "labelling run", state):
        _label_all(run, state, progress)
    return load_labeled_dataset(run.out)


def load_labeled_dataset(out_dir: PathLike, *, verify: bool = True) -> Any:
    """Returns the ``train`` split of a finished :func:`label_dataset` run (memory-mapped, ordered by ``index``).

    With ``verify``, every shard's checksum is compared with its record first: damaged data is never trusted.

    Raises:
        IncompleteLabelingError: some shards are missing (rerun the same command to resume).
        ValueError: a shard is damaged (the message names it; rerunning the labelling labels it again).
    """
    import datasets

    out = Path(out_dir)
    manifest = read_manifest(out)
    if verify and manifest.get("complete"):
        from .._io import file_sha256

        for record in manifest.get("shards", []):
            shard = read_json(out / "shards" / f"{record['name']}.json", "shard record")
            data = out / SPLIT / f"data-{record['name']}.arrow"
            if not data.is_file() or file_sha256(data) != shard["sha256"]:
                raise ValueError(f"{str(data)!r} is damaged or missing (its checksum does not match its record); rerun "
                                 f"the labelling command with this folder to label that shard again")
    if not manifest.get("complete") or not is_dataset_dict(out):
        missing = manifest.get("num_shards", 0) - manifest.get("num_finished_shards", 0)
        raise IncompleteLabelingError(
            f"{str(out)!r} is incomplete: {missing} of {manifest.get('num_shards')} shards missing; rerun the same "
            f"command (same data, labeler settings and seed) with this out_dir to resume")
    with quiet_datasets():
        return datasets.load_from_disk(str(out))[SPLIT]

