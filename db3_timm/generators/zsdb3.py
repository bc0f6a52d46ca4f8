"""ZSDB3: a zero-shot transfer set grown from noise with label queries only.

Pseudo samples start as noise the teacher assigns to each class; every iteration finds each
sample's nearest decision boundary (untargeted minimal boundary distance) and moves the sample
away from it, so the samples become robust, typical members of their class.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._checks import check_int, check_number
from .._io import canonical, config_diff, save_safetensors_atomic
from .._registry import register_generator
from ..boundary import PLAIN_SEARCH, BoundarySearchConfig, PairQueries, minimize_boundary_distance
from ..oracle import LabelOracle
from .priors import NOISE_PRIORS, noise_prior, reference_noise, smooth_noise, start_noise, stretched_noise

# The noise priors live in .priors; they are re-exported here because callers imported them from this module first.
__all__ = ["ZSDB3Generator", "PseudoSamples", "GenerationState", "reference_noise", "smooth_noise", "stretched_noise",
           "NOISE_PRIORS", "noise_prior", "start_noise"]


@dataclass
class PseudoSamples:
    """The generator's output.

    Attributes:
        images: ``(N, C, H, W)`` pseudo samples in ``[0, 1]``.
        labels: ``(N,)`` the teacher's labels (kept through every iteration).
        robustness: ``(iterations, N)`` distance to the nearest boundary found in each iteration,
            before that iteration's move (``nan`` where not measured yet).
        snapshots: iteration -> images at that iteration.
        queries: query totals (``init``: start search, ``iterations``: everything after, ``mixes``).
        warm_starts: boundary searches that started from the previous iteration's direction.
        missing_classes: classes the teacher never answered during the start search.
        pool_images: ``(P, C, H, W)`` start-search images (and mixes) kept with their teacher labels.
        pool_labels: ``(P,)`` the teacher's labels of ``pool_images``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    robustness: torch.Tensor
    snapshots: Dict[int, torch.Tensor] = field(default_factory=dict)
    queries: Dict[str, int] = field(default_factory=dict)
    warm_starts: int = 0
    missing_classes: List[int] = field(default_factory=list)
    pool_images: Optional[torch.Tensor] = None
    pool_labels: Optional[torch.Tensor] = None

    @property
    def total_queries(self) -> int:
        """Every query the generation spent."""
        return int(sum(self.queries.values()))


@dataclass
class GenerationState:
    """Everything a generation run needs to continue: saved after every step as one atomic file."""

    iteration: int
    images: torch.Tensor
    labels: torch.Tensor
    steps: torch.Tensor
    warm: torch.Tensor
    robustness: torch.Tensor
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    rng: torch.Tensor
    queries: Dict[str, int]
    warm_starts: int = 0
    missing: List[int] = field(default_factory=list)
    snapshots: Dict[int, torch.Tensor] = field(default_factory=dict)

    _TENSORS = ("images", "labels", "steps", "warm", "robustness", "pool_images", "pool_labels", "rng")

    def save(self, path: Path, meta: Dict[str, Any]) -> None:
        """Writes tensors and bookkeeping into ``path`` (one ``.safetensors`` file, so a kill leaves old or new)."""
        tensors = {k: getattr(self, k) for k in self._TENSORS}
        tensors.update({f"snapshot_{it}": snap for it, snap in self.snapshots.items()})
        info = {"meta": meta, "iteration": self.iteration, "queries": self.queries, "warm_starts": self.warm_starts,
                "missing": self.missing, "snapshots": sorted(self.snapshots)}
        save_safetensors_atomic(path, tensors, {"state": json.dumps(info)})

    @classmethod
    def load(cls, path: Path, device: torch.device) -> Tuple["GenerationState", Dict[str, Any]]:
        """Reads a state saved by :meth:`save`; returns ``(state, meta)``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                info = json.loads((fh.metadata() or {})["state"])
                t = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises its own error types for truncated files
            raise ValueError(f"generation state {str(path)!r} is damaged ({type(err).__name__}: {err}); "
                             f"delete it to start over") from None
        state = cls(iteration=int(info["iteration"]), queries=dict(info["queries"]), warm_starts=int(info["warm_starts"]),
                    missing=list(info["missing"]),
                    snapshots={int(i): t[f"snapshot_{i}"].to(device) for i in info["snapshots"]},
                    **{k: (t[k] if k == "rng" else t[k].to(device)) for k in cls._TENSORS})
        return state, info["meta"]

    def to_samples(self) -> PseudoSamples:
        """The public result of the run so far."""
        return PseudoSamples(images=self.images, labels=self.labels, robustness=self.robustness,
                             snapshots=dict(self.snapshots), queries=dict(self.queries), warm_starts=self.warm_starts,
                             missing_classes=list(self.missing), pool_images=self.pool_images, pool_labels=self.pool_labels)


STATE_FILE = "state.safetensors"


class ZSDB3Generator:
    """Zero-shot pseudo-sample generator for a label-only teacher (ZSDB3KD).

    Args:
        oracle: the label-only teacher.
        num_classes: number of classes (default ``oracle.num_classes``).
        input_shape: ``(C, H, W)`` of the images (default ``oracle.input_size``).
        seed: seeds every random choice.
        start: start prior, a :func:`~db3_timm.generators.priors.start_noise` name: ``'smooth'`` (default),
            low-frequency noise (see :func:`smooth_noise`), ``'stretched'`` (:func:`stretched_noise`), another
            :data:`NOISE_PRIORS` entry, or ``'reference'``, the paper's per-pixel noise.
        start_pool: also keep this many labelled start-search images (the search runs until it has
            them) as :attr:`PseudoSamples.pool_images`, extra transfer data at no extra query.
        init_batch: noise images per start-search round.
        max_init_queries: cap on the start search (raised to ``start_pool`` when smaller); classes still
            empty then are reported and dropped.
        max_samples: samples processed together in a boundary search (bounds memory).
        mixes: after the last iteration, add this many convex mixes ``l * a + (1 - l) * b`` (``l ~ U[0, 1)``)
            of two random pseudo-sample / pool images to the pool, each labelled by the teacher (one query).
        warm_start: start each iteration's boundary search from the previous iteration's direction (one
            query per sample) instead of from scratch, as the reference does (``False``).
        tol: relative tolerance of the boundary searches' bisections.
        search: :class:`~db3_timm.boundary.BoundarySearchConfig` fields overriding the plain search
            (:data:`~db3_timm.boundary.PLAIN_SEARCH`) of the nearest-boundary steps.
    """

    name = "zsdb3"

    def __init__(
        self,
        oracle: LabelOracle,
        *,
        num_classes: Optional[int] = None,
        input_shape: Optional[Sequence[int]] = None,
        seed: int = 0,
        start: str = "smooth",
        start_pool: int = 0,
        init_batch: int = 1024,
        max_init_queries: int = 200_000,
        max_samples: int = 256,
        mixes: int = 0,
        warm_start: bool = True,
        tol: float = 1e-2,
        search: Optional[Dict[str, Any]] = None,
    ):
        self.oracle = oracle
        self.num_classes = int(num_classes or oracle.num_classes or 0)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (pass num_classes=), got {num_classes!r}")
        if oracle.num_classes is not None and self.num_classes != oracle.num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the teacher answers {oracle.num_classes} classes")
        shape = input_shape or oracle.input_size
        if shape is None or len(tuple(shape)) != 3 or min(int(v) for v in shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) positive integers, got {shape!r}")
        self.input_shape = tuple(int(v) for v in shape)
        if oracle.input_size is not None and self.input_shape[0] != oracle.input_size[0]:
            raise ValueError(f"input_shape {self.input_shape} has {self.input_shape[0]} channel(s) but the teacher "
                             f"takes {oracle.input_size[0]} (teacher input size {oracle.input_size})")
        start_noise(start)  # refused here, before any query
        self.seed = check_int("seed", seed, -(2**63), at_most=2**63 - 1)
        self.start = start
        self.start_pool = check_int("start_pool", start_pool, 0)
        self.init_batch = check_int("init_batch", init_batch, 1)
        self.max_init_queries = max(check_int("max_init_queries", max_init_queries, 1), self.start_pool)
        self.max_samples = check_int("max_samples", max_samples, 1)
        self.mixes = check_int("mixes", mixes, 0)
        self.warm_start = bool(warm_start)
        self.search = BoundarySearchConfig.from_dict({**(search or {}), "tol": tol}, base=PLAIN_SEARCH)
        self.tol = self.search.tol

    def config(self) -> Dict[str, Any]:
        """Returns the settings that determine the output (for manifests and model cards)."""
        return {"generator": self.name, "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "seed": self.seed, "start": self.start, "start_pool": self.start_pool, "init_batch": self.init_batch,
                "max_init_queries": self.max_init_queries, "search": self.search.to_dict(),
                "warm_start": self.warm_start, "mixes": self.mixes}

    def planned_queries(self, samples_per_class: int, iterations: int, queries_per_iteration: int) -> int:
        """Returns the most queries :meth:`generate` can spend with these settings (start search included)."""
        samples = self.num_classes * int(samples_per_class)
        return self.max_init_queries + samples * int(iterations) * int(queries_per_iteration) + self.mixes

    # ------------------------------------------------------------------ start
    def initial_samples(
        self, samples_per_class: int, generator: torch.Generator, device: torch.device
    ) -> Tuple[torch.Tensor, torch.Tensor, int, List[int], Tuple[torch.Tensor, torch.Tensor]]:
        """Rejection-samples start noise until each class has ``samples_per_class`` images (or the cap is hit).

        Returns:
            ``(images, labels, queries, missing_classes, (pool_images, pool_labels))``; classes sorted
            ascending, a class never answered is missing (with a warning), a class answered too rarely
            keeps what was found; the pool holds the first ``start_pool`` images queried.
        """
        noise_fn = start_noise(self.start)
        found: List[List[torch.Tensor]] = [[] for _ in range(self.num_classes)]
        pool: List[Tuple[torch.Tensor, torch.Tensor]] = []
        have = torch.zeros(self.num_classes, dtype=torch.long)
        spent = 0
        while (bool((have < samples_per_class).any()) or spent < self.start_pool) and spent < self.max_init_queries:
            n = min(self.init_batch, self.max_init_queries - spent)
            noise = noise_fn(n, self.input_shape, generator, device)
            labels = self.oracle(noise)
            if spent < self.start_pool:
                k = min(n, self.start_pool - spent)
                pool.append((noise[:k], labels[:k]))
            spent += n
            counts = torch.bincount(labels, minlength=self.num_classes).cpu()
            for c in (counts > 0).logical_and(have < samples_per_class).nonzero().flatten().tolist():
                take = noise[labels == c][: samples_per_class - int(have[c])]
                found[c].append(take)
                have[c] += take.shape[0]
        missing = [c for c in range(self.num_classes) if have[c] == 0]
        short = [c for c in range(self.num_classes) if 0 < have[c] < samples_per_class]
        if missing or short:
            names = getattr(self.oracle, "class_names", None) or list(range(self.num_classes))
            missing_named, short_named = [names[c] for c in missing], [names[c] for c in short]
            warnings.warn(
                f"start search stopped after {spent} queries (max_init_queries={self.max_init_queries}): "
                f"the teacher never answered classes {missing_named} for noise; classes {short_named} have fewer than "
                f"{samples_per_class} samples. They are left out / kept short; raise max_init_queries or "
                f"seed the generator with a few real images of those classes.",
                stacklevel=2,
            )
        empty = torch.zeros(0, *self.input_shape, device=device)
        images = torch.cat([torch.cat(f) for f in found if f]) if int(have.sum()) else empty
        labels = torch.cat([torch.full((int(have[c]),), c, dtype=torch.long, device=device)
                            for c in range(self.num_classes) if have[c]] or [torch.zeros(0, dtype=torch.long, device=device)])
        pool_images = torch.cat([p[0] for p in pool]) if pool else empty
        pool_labels = torch.cat([p[1] for p in pool]) if pool else torch.zeros(0, dtype=torch.long, device=device)
        return images, labels, spent, missing, (pool_images, pool_labels)

    def _start(self, samples_per_class: int, iterations: int, step: float, snapshots: Sequence[int],
               device: torch.device) -> GenerationState:
        generator = torch.Generator(device=device).manual_seed(self.seed)
        images, labels, init_q, missing, (pool_images, pool_labels) = self.initial_samples(samples_per_class, generator, device)
        n = labels.shape[0]
        return GenerationState(
            iteration=0, images=images, labels=labels, steps=torch.full((n,), float(step), device=device),
            warm=torch.zeros(n, images[0].numel() if n else 0, device=device),
            robustness=torch.full((iterations, n), float("nan"), device=device),
            pool_images=pool_images, pool_labels=pool_labels, rng=generator.get_state(),
            queries={"init": init_q, "iterations": 0}, missing=missing,
            snapshots={0: images.clone()} if 0 in snapshots else {})

    # ------------------------------------------------------------------ one iteration
    def _nearest_boundary(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        warm: torch.Tensor,
        pool: Tuple[torch.Tensor, torch.Tensor],
        budget: int,
        generator: torch.Generator,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Untargeted minimal boundary search for a chunk. Returns ``(dist, direction, spent per sample, warm hits)``."""
        n = x.shape[0]
        x0 = x.flatten(1)
        query = PairQueries(self.oracle, self.input_shape, labels, None, budget)
        adv = x0.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        # Warm start: the previous direction, pushed past where the boundary was.
        has_warm = (warm.norm(dim=1) > 0) & self.warm_start
        if bool(has_warm.any()):
            p = has_warm.nonzero().squeeze(1)
            cand = (x0[p] + warm[p]).clamp(0.0, 1.0)
            ok = query(cand, p)
            adv[p[ok]] = cand[ok]
            found[p[ok]] = True
        warm_hits = int(found.sum())
        # Cold start: the nearest pseudo sample of another class (the whole set serves as references).
        cold = ~found
        if bool(cold.any()):
            pool_flat, pool_labels = pool
            d = torch.cdist(x0[cold], pool_flat)
            d = d.masked_fill(pool_labels.view(1, -1) == labels[cold].view(-1, 1), torch.inf)
            dist, idx = d.min(1)
            ok = torch.isfinite(dist)
            p = cold.nonzero().squeeze(1)[ok]
            adv[p] = pool_flat[idx[ok]]
            found[p] = True
        adv = minimize_boundary_distance(query, x0, adv, found, generator, self.search)
        delta = adv - x0
        dist = torch.where(found, delta.norm(dim=1), torch.inf)
        direction = delta / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return dist, direction, query.spent, warm_hits

    def _iterate(self, state: GenerationState, queries_per_iteration: int, step_growth: float,
                 generator: torch.Generator) -> Dict[str, float]:
        """One push-away iteration on every sample, in place; returns its statistics."""
        images, labels = state.images, state.labels
        n = labels.shape[0]
        pool = (images.flatten(1), labels)
        dist = torch.empty(n, device=images.device)
        direction = torch.zeros_like(state.warm)
        spent = torch.zeros(n, dtype=torch.long, device=images.device)
        for s in range(0, n, self.max_samples):
            sl = slice(s, s + self.max_samples)
            dist[sl], direction[sl], spent[sl], hits = self._nearest_boundary(
                images[sl], labels[sl], state.warm[sl], pool, queries_per_iteration - 1, generator)
            state.warm_starts += hits
        state.robustness[state.iteration] = dist
        # Move away from the boundary; one query checks the label is kept.
        movable = torch.isfinite(dist)
        steps = state.steps
        moved = (images.flatten(1) - steps.unsqueeze(1) * direction).clamp(0.0, 1.0).view_as(images)
        p = movable.nonzero().squeeze(1)
        keep = torch.zeros_like(movable)
        if p.numel():
            keep[p] = self.oracle(moved[p]) == labels[p]
        state.queries["iterations"] += int(spent.sum()) + int(p.numel())
        state.images = torch.where(keep.view(-1, 1, 1, 1), moved, images)
        state.steps = torch.where(keep, steps * step_growth, torch.where(movable, steps * 0.5, steps))
        # Next warm start: past the boundary seen now, plus the distance just moved away.
        state.warm = torch.where(movable.unsqueeze(1),
                                 direction * (2.0 * (dist + torch.where(keep, steps, 0.0))).unsqueeze(1), 0.0)
        state.iteration += 1
        state.rng = generator.get_state()
        return {"mean_robustness": float(dist[movable].mean()) if bool(movable.any()) else float("nan"),
                "moved": float(keep.float().mean()), "queries": sum(state.queries.values())}

    def _add_mixes(self, state: GenerationState, generator: torch.Generator) -> None:
        """Appends ``self.mixes`` teacher-labelled convex mixes of pseudo-sample / pool images to the pool."""
        source = torch.cat([state.images, state.pool_images])
        n = self.mixes
        pick = torch.randint(0, source.shape[0], (2, n), generator=generator, device=source.device)
        lam = torch.rand(n, 1, 1, 1, generator=generator, device=source.device)
        mixed = torch.lerp(source[pick[1]], source[pick[0]], lam)
        state.pool_images = torch.cat([state.pool_images, mixed])
        state.pool_labels = torch.cat([state.pool_labels, self.oracle(mixed).to(state.pool_labels.device)])
        state.queries["mixes"] = n
        state.rng = generator.get_state()

    # ------------------------------------------------------------------ public
    def generate(
        self,
        samples_per_class: int,
        iterations: int,
        queries_per_iteration: int,
        *,
        step: float = 0.5,
        step_growth: float = 1.0,
        snapshots: Sequence[int] = (),
        out_dir: Optional[Union[str, os.PathLike]] = None,
        progress: bool = True,
        device: Optional[Union[str, torch.device]] = None,
        on_iteration: Optional[Callable[[int, Dict[str, Any]], None]] = None,
        unit: Optional[Callable[[str], ContextManager[Any]]] = None,
    ) -> PseudoSamples:
        """Grows ``samples_per_class`` pseudo samples per class from noise.

        Each iteration spends at most ``queries_per_iteration`` queries per sample: the nearest-boundary
        search (warm-started from the previous direction) plus one query checking the move
        ``x <- clip(x - step_i * direction, 0, 1)``; a move that would change the label is undone and
        that sample's step halved, a kept move multiplies it by ``step_growth``.

        Args:
            samples_per_class: pseudo samples per class.
            iterations: number of push-away iterations.
            queries_per_iteration: exact per-sample budget of one iteration (at least 20).
            step: initial L2 length of a move.
            step_growth: factor applied to a sample's step after a kept move (``1`` keeps it fixed,
                as the reference does; ``> 1`` lets samples far from every boundary travel faster).
            snapshots: iterations whose images are kept in the result.
            out_dir: if given, state is saved (``out_dir/state.safetensors``, atomically) after the start and
                every iteration, and a run with the same ``out_dir`` resumes where it stopped (bit-identical
                to an uninterrupted run). A run asking for more iterations than a saved one continues it;
                fewer, or other settings, is refused before any query.
            progress: show a tqdm bar (iteration, mean robustness, queries).
            device: where to build the samples (default: the oracle's device or CPU).
            on_iteration: optional callback ``(iteration, stats)``.
            unit: optional ``unit(name)`` context (a :class:`~db3_timm.store.QueryStore`'s ``unit``) wrapped around
                each step (``zsdb3-00000`` the start, ``zsdb3-0000k`` iteration k, ``zsdb3-mixes``) before its state
                is saved, so every answer is stored exactly once however often the run is resumed.

        Returns:
            :class:`PseudoSamples`.
        """
        from tqdm.auto import tqdm

        check_int("samples_per_class", samples_per_class, 1)
        check_int("iterations", iterations, 0)
        check_int("queries_per_iteration", queries_per_iteration, 20)
        check_number("step", step, low=0, low_open=True)
        check_number("step_growth", step_growth, low=1)
        device = torch.device(device or self.oracle.device or "cpu")
        meta = {"config": self.config(), "samples_per_class": int(samples_per_class),
                "queries_per_iteration": int(queries_per_iteration), "step": float(step), "step_growth": float(step_growth)}
        path = Path(out_dir) / STATE_FILE if out_dir is not None else None
        unit = unit or (lambda name: contextlib.nullcontext())
        state = self._load_or_start(path, meta, samples_per_class, iterations, step, snapshots, device, unit)
        generator = torch.Generator(device=device)
        generator.set_state(state.rng)
        bar = tqdm(total=iterations, initial=state.iteration, desc="zsdb3", disable=not progress, unit="it")
        while state.iteration < iterations:
            with unit(f"zsdb3-{state.iteration + 1:05d}"):
                stats = self._iterate(state, queries_per_iteration, step_growth, generator)
            if state.iteration in snapshots:
                state.snapshots[state.iteration] = state.images.clone()
            if path is not None:
                state.save(path, meta)
            bar.set_postfix(robust=f"{stats['mean_robustness']:.3f}", moved=f"{stats['moved']:.2f}", queries=stats["queries"])
            bar.update(1)
            if on_iteration is not None:
                on_iteration(state.iteration, stats)
        bar.close()
        if self.mixes and "mixes" not in state.queries:  # a finished run read back is not mixed again
            with unit("zsdb3-mixes"):
                self._add_mixes(state, generator)
            if path is not None:
                state.save(path, meta)
        return state.to_samples()

    def _load_or_start(self, path: Optional[Path], meta: Dict[str, Any], samples_per_class: int, iterations: int,
                       step: float, snapshots: Sequence[int], device: torch.device, unit: Callable) -> GenerationState:
        """The saved state of ``path`` (checked against ``meta``), or a fresh start saved there."""
        if path is not None and path.is_file():
            return self._resume(path, meta, iterations, device)
        with unit("zsdb3-00000"):
            state = self._start(samples_per_class, iterations, step, snapshots, device)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state.save(path, meta)
        return state

    def _resume(self, path: Path, meta: Dict[str, Any], iterations: int, device: torch.device) -> GenerationState:
        """Reads a saved run and checks it can continue to ``iterations`` with the same settings."""
        state, saved = GenerationState.load(path, device)
        if canonical(saved) != canonical(meta):
            raise ValueError(f"{path.parent} holds a generation run with other settings ({config_diff(saved, meta)}); "
                             f"rerun with the original settings or use another out_dir")
        if iterations < state.iteration:
            raise ValueError(f"{path.parent} holds a run already at iteration {state.iteration}; asking for "
                             f"{iterations} iterations would need discarding work. Ask for at least {state.iteration}, "
                             f"or use another out_dir")
        if iterations > state.iteration and "mixes" in state.queries:
            raise ValueError(f"{path.parent} holds a finished run whose mixes were drawn after iteration "
                             f"{state.iteration}; extending it to {iterations} would mix stale samples. Use another out_dir")
        if state.robustness.shape[0] < iterations:
            pad = torch.full((iterations - state.robustness.shape[0], state.labels.shape[0]), float("nan"), device=device)
            state.robustness = torch.cat([state.robustness, pad])
        return state


@register_generator(name="zsdb3")
def zsdb3(oracle: LabelOracle, **cfg: Any) -> ZSDB3Generator:
    """Builds the ZSDB3 zero-shot generator."""
    return ZSDB3Generator(oracle, **cfg)
