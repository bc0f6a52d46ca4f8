"""Every answer kept: a store of each (input, answer) a teacher gives, on disk, as training rows.

Attached to a :class:`~db3_timm.oracle.LabelOracle` (``with store.attached(oracle):``), a :class:`QueryStore`
records every image the teacher labels -- label queries, boundary probes, mixes, pseudo samples -- with its
answer and where it came from. Rows are grouped in *units*, the steps of a job (a labelling shard, a batch of
mixes, a generation iteration): a unit's rows are committed together when it finishes and dropped if it
fails, so a resumed job, which repeats the unit it was in, never stores an answer twice. Rows wait in memory
only up to ``flush_rows`` before going to a pending file, so a store of ten million answers never needs more
RAM than one flush.

The folder is a db3 dataset (:mod:`~db3_timm._disk`): ``datasets.load_from_disk(DIR)["train"]`` opens it,
with the columns of a transfer set (:func:`transfer_features`): ``image``, ``label``, ``soft_logits``,
``kd_weight`` (0 on hard-labelled rows; soft rows are added with :meth:`QueryStore.add_rows`) and the
provenance ``source`` (the component), ``unit`` and ``call`` (the oracle call within the unit).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import _disk
from ._disk import finish_dataset_dict, quiet_datasets
from ._io import PathLike, read_json, write_json_atomic

__all__ = ["QueryStore", "transfer_features", "STORE_DTYPES"]

#: Image dtypes a store can keep: float32 keeps exactly what was asked; uint8 suits 8-bit (quantised) queries.
STORE_DTYPES = ("float32", "uint8")


def transfer_features(image_shape: Sequence[int], class_names: Sequence[str], image_dtype: str = "float32") -> Any:
    """Returns the ``datasets.Features`` of transfer-set rows (images as ``Array3D`` of ``image_dtype``)."""
    import datasets
    from datasets import Array3D, ClassLabel, Features, Value

    return Features({
        "image": Array3D(shape=tuple(int(s) for s in image_shape), dtype=image_dtype),
        "label": ClassLabel(names=[str(c) for c in class_names]),
        "soft_logits": datasets.List(Value("float32"), length=len(class_names)),
        "kd_weight": Value("float32"),
        "source": Value("string"),
        "unit": Value("string"),
        "call": Value("int32"),
    })


class _Unit:
    """Rows of one unit while it runs: a memory buffer flushed to pending Arrow files."""

    def __init__(self, name: str, folder: Path, skip: bool = False):
        self.name, self.folder, self.skip = name, folder, skip  # skip: committed before, record nothing
        self.buffer: List[Dict[str, np.ndarray]] = []
        self.buffered = self.rows = self.calls = self.queries = 0
        self.files: List[str] = []
        self.checks: List[tuple] = []  # (bytes, sha256) per file


class QueryStore:
    """Keeps every (image, answer) of the oracles it is attached to, in resumable units on disk.

    Args:
        out_dir: the folder (created); reopening a folder continues it.
        image_shape: ``(C, H, W)`` of the images.
        class_names: the teacher's classes (their number sizes ``soft_logits``).
        image_dtype: ``"float32"`` (exactly what was asked) or ``"uint8"`` (for 8-bit queries: exact, 4x smaller).
        flush_rows: rows kept in memory before they go to a pending file.
        clean: delete what a killed job left pending (the main process does; the others must not).
    """

    def __init__(self, out_dir: PathLike, *, image_shape: Sequence[int], class_names: Sequence[str],
                 image_dtype: str = "float32", flush_rows: int = 32768, clean: bool = True):
        if image_dtype not in STORE_DTYPES:
            raise ValueError(f"image_dtype must be one of {STORE_DTYPES}, got {image_dtype!r}")
        self.out = Path(out_dir)
        self.features = transfer_features(image_shape, class_names, image_dtype)
        self.image_shape, self.num_classes = tuple(int(s) for s in image_shape), len(class_names)
        self.image_dtype, self.flush_rows = image_dtype, int(flush_rows)
        self._unit: Optional[_Unit] = None
        (self.out / "units").mkdir(parents=True, exist_ok=True)
        if clean:
            shutil.rmtree(self.out / "pending", ignore_errors=True)  # left by a killed job: never committed

    # ------------------------------------------------------------------ units
    def committed(self, verify: bool = False) -> Dict[str, Dict[str, Any]]:
        """Returns ``unit name -> record`` (rows, files, queries) of every committed unit whose files are whole.

        With ``verify``, the files' checksums are compared too, and a damaged unit's record is removed (with a
        warning naming it): the job asks that unit again, so damaged rows are never trusted.
        """
        import warnings

        from ._io import file_sha256

        records = {}
        for path in sorted((self.out / "units").glob("*.json")):
            try:
                record = read_json(path, "store unit record")
                files = [self.out / "train" / f for f in record["files"]]
                ok = all(f.is_file() and f.stat().st_size == size for f, size in zip(files, record["bytes"]))
                ok = ok and (not verify or [file_sha256(f) for f in files] == record["sha256"])
            except (ValueError, KeyError, TypeError, OSError):
                ok, record = False, None
            if ok:
                records[record["name"]] = record
            elif verify:
                warnings.warn(f"store unit {path.name} in {self.out} is damaged; it is asked again", stacklevel=2)
                path.unlink(missing_ok=True)
        return records

    def read_unit(self, name: str, columns: Sequence[str] = ("image", "label")) -> Dict[str, torch.Tensor]:
        """Returns ``columns`` of the committed unit ``name`` in call order (``image`` as float in ``[0, 1]``,
        ``label`` as int64)."""
        import datasets

        from ._disk import read_columns

        record = self.committed().get(name)
        if record is None:
            raise KeyError(f"unit {name!r} is not committed in the store {str(self.out)!r}")
        with quiet_datasets():
            part = datasets.concatenate_datasets([datasets.Dataset.from_file(str(self.out / "train" / f))
                                                  for f in record["files"]])
        cols = read_columns(part, list(columns))
        if "image" in cols and cols["image"].dtype == torch.uint8:
            cols["image"] = cols["image"].float().div_(255.0)
        if "label" in cols:
            cols["label"] = cols["label"].long()
        return cols

    @contextlib.contextmanager
    def unit(self, name: str) -> Iterator[bool]:
        """Groups the rows recorded inside the block into unit ``name``; yields whether the unit is new.

        The rows are committed when the block exits normally and dropped when it raises. A unit already
        committed records nothing again (a resumed job repeats the same, deterministic step).
        """
        if self._unit is not None:
            raise RuntimeError(f"unit {name!r} opened inside unit {self._unit.name!r}; units do not nest")
        if "/" in name or name.startswith("."):
            raise ValueError(f"unit names are plain file names, got {name!r}")
        known = (self.out / "units" / f"{name}.json").is_file()
        self._unit = _Unit(name, self.out / "pending" / name, skip=known)
        try:
            yield not known
            if not known:
                self._commit(self._unit)
        finally:
            shutil.rmtree(self._unit.folder, ignore_errors=True)
            self._unit = None

    def record(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Keeps teacher-labelled ``images`` (called by the oracle for every answered batch)."""
        unit = self._unit
        if unit is None:  # an answer outside any unit is kept too, as a unit of its own
            import time

            with self.unit(f"loose-{time.time_ns()}"):
                return self.record(images, labels)
        if unit.skip:
            return
        n = int(labels.shape[0])
        unit.buffer.append({"image": self._pixels(images), "label": labels.detach().cpu().long().numpy(),
                            "call": np.full(n, unit.calls, dtype=np.int32)})
        unit.calls += 1
        unit.queries += n
        unit.buffered += n
        if unit.buffered >= self.flush_rows:
            self._flush(unit)

    def add_rows(self, images: torch.Tensor, labels: torch.Tensor, soft_logits: Optional[torch.Tensor] = None,
                 kd_weight: float = 1.0) -> None:
        """Adds rows that cost no new query (soft-labelled images, answers known from earlier) to the open unit."""
        unit = self._unit
        if unit is None:
            raise RuntimeError("add_rows needs an open unit (with store.unit(name): ...)")
        if unit.skip:
            return  # the unit was committed before: its rows are on disk already
        n = int(labels.shape[0])
        soft = np.zeros((n, self.num_classes), np.float32) if soft_logits is None else soft_logits.detach().cpu().float().numpy()
        unit.buffer.append({"image": self._pixels(images), "label": labels.detach().cpu().long().numpy(),
                            "call": np.full(n, -1, dtype=np.int32), "soft_logits": soft,
                            "kd_weight": np.full(n, kd_weight if soft_logits is not None else 0.0, np.float32)})
        unit.buffered += n
        if unit.buffered >= self.flush_rows:
            self._flush(unit)

    def _pixels(self, images: torch.Tensor) -> np.ndarray:
        """Images as stored: float32 as asked, or 8-bit (exact for 8-bit queries)."""
        images = images.detach().to("cpu")
        if self.image_dtype == "uint8":
            return images.mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous().numpy()
        return images.float().contiguous().numpy()

    def _flush(self, unit: _Unit) -> None:
        if not unit.buffered:
            return
        cols = {k: np.concatenate([b[k] if k in b else _default(k, b, self.num_classes) for b in unit.buffer])
                for k in ("image", "label", "call", "soft_logits", "kd_weight")}
        n = len(cols["label"])
        source = unit.name.rsplit("-", 1)[0]
        cols.update(source=[source] * n, unit=[unit.name] * n)
        unit.folder.mkdir(parents=True, exist_ok=True)
        name = f"data-{unit.name}-{len(unit.files):04d}.arrow"
        try:
            written = _disk.write_arrow_shard(unit.folder / name, cols, self.features)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise OSError(errno.ENOSPC, f"no space left on the device of the query store {str(self.out)!r}: the "
                                        f"{len(self.committed())} units committed so far are kept; free some space and "
                                        f"rerun the same command to continue") from err
        unit.files.append(name)
        unit.checks.append((written["bytes"], written["sha256"]))
        unit.rows += n
        unit.buffer, unit.buffered = [], 0

    def _commit(self, unit: _Unit) -> None:
        self._flush(unit)
        (self.out / "train").mkdir(parents=True, exist_ok=True)
        for name in unit.files:  # same filesystem: renames, no copies
            os.replace(unit.folder / name, self.out / "train" / name)
        write_json_atomic(self.out / "units" / f"{unit.name}.json",
                          {"name": unit.name, "rows": unit.rows, "queries": unit.queries, "files": unit.files,
                           "bytes": [b for b, _ in unit.checks], "sha256": [c for _, c in unit.checks]})

    # ------------------------------------------------------------------ the whole store
    @contextlib.contextmanager
    def attached(self, oracle: Any) -> Iterator["QueryStore"]:
        """Lets ``oracle`` record into this store for the duration of the block."""
        previous, oracle.store = getattr(oracle, "store", None), self
        try:
            yield self
        finally:
            oracle.store = previous

    def finish(self, card: str) -> Any:
        """Writes the ``DatasetDict`` index over every committed unit (in name order) and returns the ``train`` split."""
        units = self.committed()
        files = [f for name in sorted(units) for f in units[name]["files"]]
        finish_dataset_dict(self.out, files, self.features, f"{len(files):08d}{sum(u['rows'] for u in units.values())}",
                            card)
        import datasets

        with quiet_datasets():
            return datasets.load_from_disk(str(self.out))["train"]


def _default(key: str, block: Dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    n = len(block["label"])
    return np.zeros((n, num_classes), np.float32) if key == "soft_logits" else np.zeros(n, np.float32)
