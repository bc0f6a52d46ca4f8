"""Pseudo samples grown from noise (``zsdb3``) as a query source: no real image needed.

Every answer of the generation -- the start search's noise images, every boundary probe, every move check,
the mixes -- is kept as a hard-labelled row; the pseudo samples are handed to a later ``db3`` step
(``on="pseudo"``) for soft labels. Figures (labelled grids, the robustness curve) and a diversity report are
written next to the store.
"""
from __future__ import annotations

from typing import Any, Dict

from .._checks import check_int, check_number
from .._io import write_json_atomic
from .._registry import create_generator, register_source
from .base import Source, SourceContext

__all__ = ["ZeroShotGeneration"]


@register_source(name="zsdb3")
class ZeroShotGeneration(Source):
    """Runs a registered generator (``zsdb3``) and leaves its pseudo samples for the next steps.

    Args:
        samples_per_class, iterations, queries_per_iteration, step, step_growth: the generation's settings.
        generator: the registered generator's name.
        options: its options (``start``, ``start_pool``, ``mixes``, ``max_init_queries``, ...).
    """

    name = "zsdb3"

    def __init__(self, samples_per_class: int = 100, iterations: int = 10, queries_per_iteration: int = 500,
                 step: float = 0.5, step_growth: float = 1.0, generator: str = "zsdb3", options: Dict[str, Any] = None):
        self.samples_per_class = check_int("samples_per_class", samples_per_class, 1)
        self.iterations = check_int("iterations", iterations, 0)
        self.queries_per_iteration = check_int("queries_per_iteration", queries_per_iteration, 20)
        self.step = check_number("step", step, low=0, low_open=True)
        self.step_growth = check_number("step_growth", step_growth, low=1)
        self.generator, self.options = generator, dict(options or {})

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "generator": self.generator, "samples_per_class": self.samples_per_class,
                "iterations": self.iterations, "queries_per_iteration": self.queries_per_iteration, "step": self.step,
                "step_growth": self.step_growth, "options": self.options}

    def describe(self, oracle: Any, seed: int) -> Dict[str, Any]:
        return {**self.config(), "generator_config": self.build(oracle, seed).config()}

    def build(self, oracle: Any, seed: int, input_shape=None) -> Any:
        """Returns the generator (its options checked now, before any query)."""
        return create_generator(self.generator, oracle, seed=seed, input_shape=input_shape, **self.options)

    def cost(self, oracle: Any, input_shape=None) -> int:
        """Returns the most queries the generation can spend."""
        return self.build(oracle, 0, input_shape).planned_queries(self.samples_per_class, self.iterations,
                                                                 self.queries_per_iteration)

    def run(self, ctx: SourceContext, queries: int) -> int:
        gen = self.build(ctx.oracle, ctx.seed, ctx.image_shape)
        if self.cost(ctx.oracle, ctx.image_shape) > queries:
            raise ValueError(f"the generation can spend {self.cost(ctx.oracle, ctx.image_shape):,} queries; the step has {queries:,}")
        rank = 0 if ctx.state is None else ctx.state.process_index
        pseudo = self._generate(ctx, gen) if rank == 0 else None
        if ctx.state is not None and ctx.state.num_processes > 1:
            ctx.state.wait_for_everyone()
        if pseudo is None:  # the other processes read the finished run back: nothing asked, nothing stored twice
            pseudo = gen.generate(self.samples_per_class, self.iterations, self.queries_per_iteration, step=self.step,
                                  step_growth=self.step_growth, out_dir=ctx.store.out / "generation", progress=False,
                                  unit=ctx.store.unit)
        ctx.extra.update(pseudo_images=pseudo.images.cpu(), pseudo_labels=pseudo.labels.cpu(), generator=gen.config(),
                         missing_classes=pseudo.missing_classes)
        return ctx.queries_of(self.name)

    def _generate(self, ctx: SourceContext, gen: Any) -> Any:
        from ..report import diversity_report, plot_curve, save_class_grids

        out = ctx.store.out
        pseudo = gen.generate(self.samples_per_class, self.iterations, self.queries_per_iteration, step=self.step,
                              step_growth=self.step_growth, out_dir=out / "generation", progress=ctx.progress,
                              unit=ctx.store.unit)
        names = ctx.extra.get("class_names")
        save_class_grids(pseudo.images, pseudo.labels, out / "grids", class_names=names)
        mean = pseudo.robustness.nanmean(1).tolist() if self.iterations else []
        if mean:
            plot_curve({"mean distance to the nearest boundary": mean}, out / "robustness.png",
                       xlabel="push-away iteration", ylabel="L2 distance (pixel space)",
                       title="How far pseudo samples sit from the teacher's nearest decision boundary")
        write_json_atomic(out / "diversity.json", diversity_report(pseudo.images, pseudo.labels, gen.num_classes))
        write_json_atomic(out / "generation.json", {"generator": gen.config(), "queries": pseudo.queries,
                                                    "missing_classes": pseudo.missing_classes, "mean_robustness": mean})
        return pseudo
