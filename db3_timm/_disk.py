"""Sharded datasets on disk that the standard tools open as they are.

A db3 dataset folder is a ``datasets.DatasetDict`` saved the way ``save_to_disk`` saves one, written
shard by shard so a killed job keeps every finished shard::

    out_dir/
      dataset_dict.json            # {"splits": ["train"]}          (written once every shard is there)
      train/data-00000-of-00004.arrow, ...                           (one file per shard, renamed into place)
      train/state.json, train/dataset_info.json                      (written once every shard is there)
      README.md                    # dataset card whose YAML lets `datasets.load_dataset(out_dir)` read it

so ``datasets.load_from_disk(out_dir)["train"]``, ``datasets.load_dataset(out_dir)`` and
``db3_timm.data.load_image_dataset("hf:" + out_dir)`` all read it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

from ._io import PathLike, file_sha256, tmp_path_for, write_json_atomic

__all__ = ["SPLIT", "ShardedDataset", "read_columns", "quiet_datasets", "write_arrow_shard", "finish_dataset_dict", "dataset_card",
           "is_dataset_dict"]

SPLIT = "train"


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silences ``datasets``' own progress bars (one per shard would bury ours)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def write_arrow_shard(path: PathLike, columns: Mapping[str, Any], features: Any) -> Dict[str, Any]:
    """Writes one shard (numpy / list columns with ``datasets`` ``features``) as an Arrow file, atomically.

    Returns:
        ``{"file": name, "rows": n, "bytes": size, "sha256": checksum}`` for the shard's record.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    table = datasets.Dataset.from_dict(dict(columns), features=features).data.table
    tmp = tmp_path_for(path)
    try:
        writer = ArrowWriter(features=features, path=str(tmp))
        writer.write_table(table)
        writer.finalize()
        writer.close()
        record = {"file": path.name, "rows": int(table.num_rows), "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return record


def finish_dataset_dict(out_dir: PathLike, files: Sequence[str], features: Any, fingerprint: str, card: str) -> None:
    """Writes the index files that make ``out_dir`` a saved ``DatasetDict`` over the Arrow ``files`` of its split."""
    import datasets

    out = Path(out_dir)
    split = out / SPLIT
    datasets.DatasetInfo(features=features).write_to_directory(str(split))
    write_json_atomic(split / "state.json", {
        "_data_files": [{"filename": f} for f in files], "_fingerprint": fingerprint[:16], "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None})
    tmp = tmp_path_for(out / "README.md")
    tmp.write_text(card, encoding="utf-8")
    os.replace(tmp, out / "README.md")
    write_json_atomic(out / "dataset_dict.json", {"splits": [SPLIT]})


def read_columns(ds: Any, columns: Sequence[str]) -> Dict[str, Any]:
    """Returns ``columns`` of ``ds`` as CPU tensors, each in its stored dtype (``datasets`` would widen uint8 to int64)."""
    import numpy as np
    import torch

    out = {}
    for name in columns:
        feature = ds.features[name]
        dtype = getattr(feature, "dtype", None)
        kwargs = {"dtype": np.dtype(dtype)} if dtype in ("uint8", "float32") else {}
        out[name] = torch.from_numpy(np.ascontiguousarray(ds.with_format("numpy", columns=[name], **kwargs)[:][name]))
    return out


def is_dataset_dict(folder: PathLike) -> bool:
    """Returns whether ``folder`` holds a finished db3 dataset (what ``datasets.load_from_disk`` can open)."""
    return (Path(folder) / "dataset_dict.json").is_file() and (Path(folder) / SPLIT / "state.json").is_file()


def dataset_card(title: str, summary: str, columns: Sequence[Sequence[str]], provenance: Optional[str] = None,
                 tags: Sequence[str] = ("knowledge-distillation", "db3-timm")) -> str:
    """Returns a dataset card (``README.md``) with the YAML ``configs`` block ``datasets.load_dataset`` reads.

    Args:
        title: the card's heading.
        summary: one paragraph on what the rows are.
        columns: ``(name, type, meaning)`` rows of the column table.
        provenance: optional fenced JSON (or text) block on how the data was made.
        tags: Hub tags.
    """
    tag_lines = "".join(f"- {t}\n" for t in tags)
    table = "\n".join(f"| `{name}` | {kind} | {meaning} |" for name, kind, meaning in columns)
    body = (f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: {SPLIT}\n    path: {SPLIT}/data-*.arrow\n"
            f"tags:\n{tag_lines}---\n# {title}\n\n{summary}\n\n| column | type | meaning |\n|---|---|---|\n{table}\n\n"
            f"Open it with `datasets.load_from_disk(DIR)[\"{SPLIT}\"]`, `datasets.load_dataset(DIR)` or "
            f"`db3_timm.data.load_image_dataset(\"hf:DIR\")`.\n")
    if provenance:
        body += f"\n## Provenance\n\n```json\n{provenance}\n```\n"
    return body


class ShardedDataset:
    """A db3 dataset folder written one named shard at a time; a shard exists once its record is in place.

    Each :meth:`commit` writes ``split/data-{name}.arrow`` (atomic rename) and then ``shards/{name}.json``
    with its rows, size, checksum and the caller's bookkeeping, so a killed job leaves finished shards and
    nothing half-written. :meth:`finished` lists the shards on disk (checksums compared with ``verify``,
    damaged ones forgotten so they are written again); :meth:`finish` writes the ``DatasetDict`` index.

    Args:
        out_dir: the folder.
        features: the ``datasets.Features`` of every shard.
        digest: the settings' digest; shards recorded under another digest do not count.
    """

    RECORDS = "shards"

    def __init__(self, out_dir: PathLike, features: Any, digest: str):
        self.out, self.features, self.digest = Path(out_dir), features, digest

    def path(self, name: str) -> Path:
        """Returns where shard ``name``'s Arrow file lives."""
        return self.out / SPLIT / f"data-{name}.arrow"

    def commit(self, name: str, columns: Mapping[str, Any], **info: Any) -> Dict[str, Any]:
        """Writes shard ``name`` from ``columns`` and records it with ``info``; returns the record."""
        (self.out / SPLIT).mkdir(parents=True, exist_ok=True)
        (self.out / self.RECORDS).mkdir(parents=True, exist_ok=True)
        record = {"name": name, **write_arrow_shard(self.path(name), columns, self.features),
                  "config_digest": self.digest, **info}
        write_json_atomic(self.out / self.RECORDS / f"{name}.json", record)
        return record

    def finished(self, verify: bool = False) -> Dict[str, Dict[str, Any]]:
        """Returns ``name -> record`` of the shards on disk whose data file is whole (by size; by checksum with ``verify``).

        With ``verify``, a damaged or foreign shard's record is removed (with a warning naming it) so it is written again.
        """
        import warnings

        from ._io import read_json

        found: Dict[str, Dict[str, Any]] = {}
        root = self.out / self.RECORDS
        for rec_path in sorted(root.glob("*.json")) if root.is_dir() else []:
            try:
                record = read_json(rec_path, "shard record")
                data = self.path(record["name"])
                ok = record["config_digest"] == self.digest and data.is_file() and data.stat().st_size == record["bytes"]
                ok = ok and (not verify or file_sha256(data) == record["sha256"])
            except (ValueError, KeyError, TypeError, OSError):
                ok, record = False, None
            if ok:
                found[record["name"]] = record
            elif verify:
                warnings.warn(f"shard record {str(rec_path)!r} (or its data file) is damaged or belongs to other "
                              f"settings; that shard is written again", stacklevel=2)
                rec_path.unlink(missing_ok=True)
        return found

    def remove_stale(self) -> None:
        """Deletes temporary files a killed job left behind (never renamed into place)."""
        for stale in (self.out / SPLIT).glob(".*.tmp") if (self.out / SPLIT).is_dir() else []:
            stale.unlink(missing_ok=True)

    def finish(self, names: Sequence[str], card: str) -> None:
        """Makes the folder a saved ``DatasetDict`` over the shards ``names`` (in that order)."""
        finish_dataset_dict(self.out, [self.path(n).name for n in names], self.features, self.digest, card)

    def load(self) -> Any:
        """Returns the ``train`` split of the finished folder (memory-mapped)."""
        import datasets

        with quiet_datasets():
            return datasets.load_from_disk(str(self.out))[SPLIT]
