"""What every query source shares: the job's context and deterministic, resumable units of work."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .._checks import check_int
from ..oracle import LabelOracle
from ..store import QueryStore

__all__ = ["SourceContext", "Source", "unit_generator"]


def unit_generator(seed: int, source: str, k: int) -> torch.Generator:
    """Returns the CPU generator of unit ``k`` of ``source`` in a job seeded with ``seed`` (the same on every run)."""
    tag = int.from_bytes(hashlib.sha256(f"{source}:{int(seed)}:{int(k)}".encode()).digest()[:8], "little") >> 1
    return torch.Generator(device="cpu").manual_seed(tag)


@dataclass
class SourceContext:
    """What a source may use: the teacher (with its store attached), the user's images and what is known so far.

    Attributes:
        oracle: the label-only teacher; every answer it gives goes into ``store``.
        store: the job's :class:`~db3_timm.store.QueryStore` (also the transfer set being built).
        images: ``(N, C, H, W)`` the user's images in ``[0, 1]``, or ``None`` (zero-shot).
        num_classes: the teacher's classes.
        seed: the job's seed (each unit draws from :func:`unit_generator`).
        labels: the teacher's labels of ``images`` once the ``hard`` source has asked them.
        state: the process state (``num_processes``, ``process_index``, ``wait_for_everyone``).
        progress: show progress bars.
        extra: what sources hand to later ones (e.g. pseudo samples for the labeler).
    """

    oracle: LabelOracle
    store: QueryStore
    images: Optional[torch.Tensor]
    num_classes: int
    seed: int = 0
    labels: Optional[torch.Tensor] = None
    state: Any = None
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> Sequence[int]:
        """``(C, H, W)`` of the teacher's input."""
        return self.store.image_shape

    def run_units(self, source: str, total: int, per_unit: int, work: Callable[[int, int, torch.Generator], None],
                  *, split: bool = False, unit: str = "queries") -> int:
        """Runs ``work(k, size, generator)`` for each unit of ``source`` not committed yet; returns its queries.

        The ``total`` is cut into units of ``per_unit`` (the last one shorter); each unit's rows are committed
        when it returns. With several processes, the main process runs every unit, or with ``split`` process ``p``
        runs the units ``k`` with ``k % P == p``; all wait for each other at the end.
        """
        from tqdm.auto import tqdm

        check_int(f"{source} {unit}", total, 0)
        done = self.store.committed()
        sizes = [min(per_unit, total - start) for start in range(0, total, per_unit)]
        rank, procs = (self.state.process_index, self.state.num_processes) if self.state is not None else (0, 1)
        mine = (lambda k: k % procs == rank) if split else (lambda k: rank == 0)  # unsplit work: the main process
        bar = tqdm(total=total, desc=source, unit=unit[:-1] if unit.endswith("s") else unit, dynamic_ncols=True,
                   disable=not (self.progress and rank == 0) or not total)
        for k, size in enumerate(sizes):
            name = f"{source}-{k:05d}"
            if name not in done and mine(k):
                with self.store.unit(name):
                    work(k, size, unit_generator(self.seed, source, k))
            bar.update(size)
        bar.close()
        if procs > 1:
            self.state.wait_for_everyone()
        return self.queries_of(source)

    def queries_of(self, source: str) -> int:
        """Returns the queries spent by every committed unit of ``source`` (this run's and earlier runs')."""
        return sum(r["queries"] for n, r in self.store.committed().items() if n.rsplit("-", 1)[0] == source)

    def rows_of(self, source: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the images ``(N, C, H, W)`` and teacher labels ``(N,)`` of every committed unit of ``source``,
        in unit order (read back from the store)."""
        names = sorted(n for n in self.store.committed() if n.rsplit("-", 1)[0] == source)
        parts = [self.store.read_unit(n) for n in names]
        if not parts:
            return torch.empty(0, *self.image_shape), torch.empty(0, dtype=torch.long)
        return torch.cat([p["image"] for p in parts]), torch.cat([p["label"] for p in parts])


class Source:
    """A way to spend queries. Subclasses set ``name`` and implement :meth:`run`; options are checked in ``__init__``."""

    name = "source"

    def run(self, ctx: SourceContext, queries: int) -> int:
        """Spends at most ``queries`` teacher queries through ``ctx.oracle``; returns the queries it spent."""
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        """Returns the options that determine the rows (for manifests and model cards)."""
        return {"source": self.name}

    def describe(self, oracle: LabelOracle, seed: int) -> Dict[str, Any]:
        """Returns :meth:`config` with what the source builds from it (e.g. a labeler's whole config), compared
        when a job resumes."""
        return self.config()
