"""Zero-shot samples from the ``synth`` generator as a query source: every round's batch, teacher-labelled.

Each round is one unit of the store (its ``queries_per_round`` answers are the round's rows); the generator's
state is saved after every committed round, so a killed job resumes to the same samples. The bank (every
labelled sample) is left in the context as pseudo samples, so a later step can mix or bisect between them
(``mixes`` / ``boundary`` with ``on="pseudo"``).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .._io import tmp_path_for, write_json_atomic
from .._registry import create_generator, register_source
from .base import Source, SourceContext, unit_generator

__all__ = ["SynthSamples", "NoiseSamples"]


@register_source(name="synth")
class SynthSamples(Source):
    """Runs the ``synth`` generator for as many whole rounds as the step's queries buy.

    Args:
        options: :class:`~db3_timm.generators.synth.SynthConfig` fields (``queries_per_round``, ``student``, ...).
    """

    name = "synth"

    def __init__(self, options: Optional[Dict[str, Any]] = None):
        from ..generators.synth import SynthConfig

        self.options = dict(options or {})
        SynthConfig(**self.options)  # checked now, before any query

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "options": self.options}

    def describe(self, oracle: Any, seed: int) -> Dict[str, Any]:
        return {**self.config(), "generator_config": self.build(oracle, seed).config()}

    def build(self, oracle: Any, seed: int, input_shape: Optional[Sequence[int]] = None) -> Any:
        """Returns the generator (its options checked)."""
        return create_generator("synth", oracle, seed=seed, input_shape=input_shape, **self.options)

    def rounds(self, queries: int) -> int:
        """Returns the whole rounds ``queries`` buy."""
        from ..generators.synth import SynthConfig

        return int(queries) // SynthConfig(**self.options).queries_per_round

    def run(self, ctx: SourceContext, queries: int) -> int:
        gen = self.build(ctx.oracle, ctx.seed, ctx.image_shape)
        rounds, per = self.rounds(queries), gen.cfg.queries_per_round
        if rounds < 1:
            raise ValueError(f"one synth round asks {per:,} queries; the step has {queries:,}")
        rank, procs = (ctx.state.process_index, ctx.state.num_processes) if ctx.state is not None else (0, 1)
        bank = self._generate(ctx, gen, rounds) if rank == 0 else None  # one generator, on the main process
        if procs > 1:
            ctx.state.wait_for_everyone()
        images, labels = bank if bank is not None else ctx.rows_of(self.name)  # others read the main one's rows
        counts = torch.bincount(labels, minlength=gen.num_classes)
        names = ctx.extra.get("class_names") or [str(c) for c in range(gen.num_classes)]
        missing = [str(names[c]) for c in range(gen.num_classes) if counts[c] == 0]
        if missing:
            warnings.warn(f"the teacher never answered {', '.join(missing)} on {len(labels):,} synth samples; the "
                          f"student learns nothing about {'it' if len(missing) == 1 else 'them'}", stacklevel=2)
        ctx.extra.update(pseudo_images=images, pseudo_labels=labels, generator=gen.config(), missing_classes=missing)
        return ctx.queries_of(self.name)

    def _generate(self, ctx: SourceContext, gen: Any, rounds: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Runs (or resumes) every round; returns the bank: every sample the teacher labelled, and its label."""
        from tqdm.auto import tqdm

        folder = ctx.store.out / "synth"
        folder.mkdir(parents=True, exist_ok=True)
        state_path = folder / "state.pt"
        if state_path.is_file():
            gen.load_state_dict(torch.load(state_path, map_location=gen.device, weights_only=True))
        done = ctx.store.committed()
        per = gen.cfg.queries_per_round
        bank_x = torch.empty(rounds * per, *gen.image_shape)
        bank_y = torch.empty(rounds * per, dtype=torch.long)
        bar = tqdm(total=rounds * per, desc="synth", unit="query", dynamic_ncols=True, disable=not ctx.progress)
        for k in range(rounds):
            name, rng = f"{self.name}-{k:05d}", unit_generator(ctx.seed, self.name, k)
            rows = slice(k * per, (k + 1) * per)
            if name in done:  # answered by an earlier run: its rows are the bank, no query
                part = ctx.store.read_unit(name)
                bank_x[rows], bank_y[rows] = part["image"], part["label"]
                if k < gen.rounds:  # the saved state is past this round already
                    bar.update(per)
                    continue
                gen.propose(rng)  # the run died after committing the round: replay its updates, same answers
            else:
                with ctx.store.unit(name):
                    x = gen.propose(rng)
                    bank_x[rows], bank_y[rows] = x.cpu(), ctx.oracle(x).cpu()
            gen.learn(bank_x[: (k + 1) * per], bank_y[: (k + 1) * per], rng)
            tmp = tmp_path_for(state_path)
            torch.save(gen.state_dict(), tmp)
            os.replace(tmp, state_path)
            bar.update(per)
        bar.close()
        from ..report import save_class_grids

        names = ctx.extra.get("class_names")
        save_class_grids(bank_x[-64 * gen.num_classes:], bank_y[-64 * gen.num_classes:], folder / "grids",
                         class_names=None if names is None else list(names))  # the latest rounds: the most refined
        write_json_atomic(folder / "generation.json", {"generator": gen.config(), "rounds": rounds,
                                                       "queries": rounds * per})
        return bank_x, bank_y


@register_source(name="noise")
class NoiseSamples(Source):
    """Teacher-labelled noise (:func:`~db3_timm.generators.priors.smooth_noise` by default): the naive zero-shot baseline.

    Args:
        unit_size: queries per unit (the step of resumption).
        keep_pool: leave the labelled noise in the context as pseudo samples, for a later step (``offspring``).
        prior: a :data:`~db3_timm.generators.priors.NOISE_PRIORS` name (``"smooth"``, ``"stretched"``).
    """

    name = "noise"

    def __init__(self, unit_size: int = 8192, keep_pool: bool = False, prior: str = "smooth"):
        from .._checks import check_int
        from ..generators.priors import noise_prior

        self.unit_size = check_int("unit_size", unit_size, 1)
        self.keep_pool = bool(keep_pool)
        self.draw, self.prior = noise_prior(prior, "prior"), prior

    def config(self) -> Dict[str, Any]:
        # The prior decides the samples, so a resumed job must not switch it; "smooth" stays unrecorded, as it
        # was before there was a choice, so older jobs resume.
        return {"source": self.name, **({} if self.prior == "smooth" else {"prior": self.prior})}

    def run(self, ctx: SourceContext, queries: int) -> int:
        def work(k: int, size: int, generator: torch.Generator) -> None:
            ctx.oracle(self.draw(size, ctx.image_shape, generator, torch.device("cpu")))

        spent = ctx.run_units(self.name, queries, self.unit_size, work)
        if self.keep_pool:
            ctx.extra["pseudo_images"], ctx.extra["pseudo_labels"] = ctx.rows_of(self.name)
        return spent
