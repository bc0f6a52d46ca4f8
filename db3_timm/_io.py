"""Files that survive a kill: atomic writes, fingerprints, config digests and run locks (one copy of each)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import torch

__all__ = [
    "PathLike",
    "tmp_path_for",
    "write_json_atomic",
    "read_json",
    "save_safetensors_atomic",
    "tensor_fingerprint",
    "module_fingerprint",
    "file_sha256",
    "canonical",
    "digest",
    "config_diff",
    "ConfigMismatchError",
    "RunLockedError",
    "run_lock",
]

PathLike = Union[str, os.PathLike]


def tmp_path_for(path: Path) -> Path:
    """Returns a hidden sibling of ``path`` unique to this process, for write-then-rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` so that a reader (or a restart after a kill) sees the old file or the new one."""
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: PathLike, what: str = "file") -> Any:
    """Returns the JSON content of ``path``; a truncated or corrupt file raises ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is damaged (not valid JSON: {err})") from None


def save_safetensors_atomic(path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes ``tensors`` (CPU, contiguous copies) and string ``metadata`` to a ``.safetensors`` file in one atomic step."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """Returns ``sha256:...`` over the shapes, dtypes and bytes of ``tensors`` (any dtype, 0-dim included)."""
    h = hashlib.sha256()
    for t in tensors:
        t = _flat(t)
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        _hash_values(h, t)
    return "sha256:" + h.hexdigest()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1)  # reshape: 0-dim buffers (BatchNorm counters) have no byte view


def _hash_values(h: Any, flat: torch.Tensor) -> None:
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))


def tensor_fingerprint_chunks(chunks: Iterable[torch.Tensor], numel: int, dtype: torch.dtype) -> str:
    """Returns :func:`tensor_fingerprint` of the concatenation of ``chunks`` (``numel`` elements of ``dtype``
    in all) without holding it: a split read slice by slice gets the string its in-memory tensor gets."""
    h = hashlib.sha256()
    h.update(f"{(int(numel),)}|{dtype}|".encode())
    seen = 0
    for t in chunks:
        t = _flat(t.to(dtype))
        seen += t.numel()
        _hash_values(h, t)
    if seen != numel:
        raise ValueError(f"the chunks hold {seen} elements, not the {numel} announced")
    return "sha256:" + h.hexdigest()


def module_fingerprint(model: torch.nn.Module) -> str:
    """Returns a fingerprint of ``model``'s state dict (names, shapes, dtypes, bytes): equal weights, equal string."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + b"|" + tensor_fingerprint(t).encode())
    return "sha256:" + h.hexdigest()


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Returns ``sha256:...`` of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def canonical(obj: Any) -> Any:
    """Returns ``obj`` through JSON and back, so tuples/lists and numpy scalars compare the way they are stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def digest(config: Mapping[str, Any]) -> str:
    """Returns the sha256 hex digest of a JSON-serialisable config (key order does not matter)."""
    return hashlib.sha256(json.dumps(canonical(config), sort_keys=True).encode()).hexdigest()


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def _diff_keys(old: Any, new: Any, prefix: str = "") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: List[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}{key}"
            keys.extend([name] if key not in old or key not in new else _diff_keys(old[key], new[key], name + "."))
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    """Returns ``"key: old -> new; ..."`` for the (dotted) keys where two configs differ, or ``""`` when equal."""
    old, new = canonical(old), canonical(new)
    keys = _diff_keys(old, new)
    return "; ".join(f"{k}: {_lookup(old, k)!r} -> {_lookup(new, k)!r}" for k in keys[:limit]) + (
        f"; and {len(keys) - limit} more" if len(keys) > limit else "")


class ConfigMismatchError(ValueError):
    """Raised when an output folder holds a job made with other settings than the current call (the message names
    what differs)."""


class RunLockedError(RuntimeError):
    """Raised when another live process holds the lock of an output folder."""


@contextlib.contextmanager
def run_lock(folder: PathLike, what: str = "run", state: Any = None) -> Iterator[None]:
    """Holds an exclusive lock on ``folder/.lock`` for the duration of a job (released when the process dies).

    The holder writes its pid, command line and start time into the file, so the refusal names the running job.
    With ``state`` (a process state with ``num_processes`` / ``process_index``), the main process takes the lock
    and every process of the job gets its outcome: all of them raise, none waits at a barrier for a refused one.

    Raises:
        RunLockedError: another live process writes into ``folder`` right now (nothing was done yet).
    """
    import fcntl

    main = state is None or int(state.process_index) == 0
    fh, refused = None, None
    if main:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            refused = (f"another {what} ({holder or 'a live process'}) is writing into {str(folder)!r} right now; "
                       f"wait for it or use another output folder")
        else:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
            fh.flush()
    refused = _agreed(refused, state)
    if refused is not None:
        raise RunLockedError(refused)
    try:
        yield
    finally:
        if fh is not None:
            fh.close()


def _agreed(value: Any, state: Any) -> Any:
    """Returns the main process's ``value`` on every process of the job (the value itself when it runs alone)."""
    import torch.distributed as dist

    if state is None or int(state.num_processes) == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
