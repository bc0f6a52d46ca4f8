"""Budget -> plan: how many queries go to which source, and why, before any query is spent.

Named plans (``PLANS``):

* ``default`` -- the best student per query we have measured (``benchmarks/frontier.py``): the images' labels,
  then the rest of the budget on augmentations and mixes of them.
* ``paper`` -- the paper's DB3KD: every image soft-labelled by a labeler (``mbd`` by default), the budget split
  evenly over the images and their other classes; the student trains on the soft-labelled images only.
* ``db3`` -- the same queries as ``paper``, and the student trains on every answer: the labeler's probes too.
* ``hard`` -- the teacher's labels of the images, nothing else.
* ``mixes`` -- labels, then teacher-labelled mixes of two images.
* ``synth`` -- no images: a generator network trained against a working student proposes samples the teacher
  labels (``synth``), then teacher-labelled mixes of those samples; the default without images under
  :data:`NOISE_FROM` queries.
* ``zsdb3`` -- no images: the paper's ZSDB3KD pseudo samples, soft-labelled by a labeler.
* ``noise`` -- no images: teacher-labelled noise (stretched smooth noise unless ``noise_prior`` says otherwise);
  the default without images from :data:`NOISE_FROM` queries on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .._registry import create_source
from .label import default_shard_size

__all__ = ["PlanStep", "Plan", "make_plan", "zero_shot_default", "PLANS", "BudgetTooSmallError"]

PLANS = ("default", "paper", "db3", "hard", "mixes", "synth", "zsdb3", "noise")
ZERO_SHOT_PLANS = ("synth", "zsdb3", "noise")

#: Queries per image that ``default`` and ``mixes`` spend when no budget is given.
DEFAULT_QUERIES_PER_IMAGE = 100
#: Queries a zero-shot plan spends when no budget is given.
DEFAULT_ZERO_SHOT_QUERIES = 50_000
#: From this many queries on, the default without images is the ``noise`` plan (stretched noise), not ``synth``.
#: Fashion-MNIST, 3 seeds (``benchmarks/RESULTS.md``): at 50k, 73.45 ± 0.82 % against 70.75 ± 2.81 % for
#: ``synth``, ahead on every seed in 43 % of the wall time; at 20k ``synth`` leads (68.21 ± 3.79 % against
#: 65.81 ± 1.06 %). Neither is a gain by the one-sd rule; the spread and the compute decide at 50k.
NOISE_FROM = 50_000
#: Share of a ``synth`` plan's rounds that are smooth noise when ``ZeroShotConfig.noise_share`` is unset.
NOISE_SHARE = 0.4
#: The ``noise`` plan's prior when ``ZeroShotConfig.noise_prior`` is unset (``synth``'s noise rounds: smooth).
NOISE_PLAN_PRIOR = "stretched"


def zero_shot_default(spend: Optional[int], zero_shot: Any = None) -> str:
    """Returns the plan ``default`` means without images for ``spend`` queries (``None``: no budget given, so
    :data:`DEFAULT_ZERO_SHOT_QUERIES`): ``"noise"`` from :data:`NOISE_FROM` on, else ``"synth"``; ``"synth"``
    too when ``zero_shot`` (a ``ZeroShotConfig``) sets options only the generator uses (``synth``, ``mix_share``,
    ``noise_share``), so they are never dropped in silence."""
    if zero_shot is not None and (zero_shot.synth or zero_shot.mix_share or zero_shot.noise_share is not None):
        return "synth"
    return "noise" if (DEFAULT_ZERO_SHOT_QUERIES if spend is None else spend) >= NOISE_FROM else "synth"


class BudgetTooSmallError(ValueError):
    """Raised before any query when a plan needs more queries than the budget allows."""


@dataclass
class PlanStep:
    """One step of a plan: a registered source, the most queries it may spend, its options, and why."""

    source: str
    queries: int
    why: str
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """What a job will ask the teacher, in order (``evaluation`` is the test split, scored after training).

    Attributes:
        name: the plan's name.
        steps: its steps.
        budget: the cap it must fit.
        train_rows: ``"all"`` (every answer trains the student) or ``"soft"`` (only soft-labelled rows, as the paper).
    """

    name: str
    steps: List[PlanStep]
    budget: Optional[int] = None
    train_rows: str = "all"

    @property
    def total(self) -> int:
        """The most queries the plan can spend."""
        return sum(s.queries for s in self.steps)

    def describe(self, queries_per_second: Optional[float] = None) -> str:
        """Returns the plan as a table (with an estimated time at ``queries_per_second``)."""
        width = max([len(s.source) for s in self.steps] + [5])
        lines = [f"  {s.source:<{width}}  {s.queries:>13,d}  {s.why}" for s in self.steps]
        lines.append(f"  {'total':<{width}}  {self.total:>13,d}  "
                     + ("(no budget set)" if self.budget is None else f"of a budget of {self.budget:,}"))
        if queries_per_second:
            lines.append(f"  estimated teacher time: {self.total / queries_per_second:,.0f} s at the measured "
                         f"{queries_per_second:,.0f} queries/s")
        return "\n".join(lines)

    def check(self) -> None:
        """Raises :class:`BudgetTooSmallError` when the plan does not fit the budget."""
        if self.budget is not None and self.total > self.budget:
            raise BudgetTooSmallError(
                f"plan {self.name!r} needs up to {self.total:,} teacher queries but the budget is {self.budget:,}:\n"
                f"{self.describe()}\nraise the budget to at least {self.total:,}, or plan fewer queries")

    def sources(self) -> List[Tuple[PlanStep, Any]]:
        """Returns every step with its source built (options checked), evaluation left out."""
        return [(s, create_source(s.source, **s.options)) for s in self.steps if s.source != "evaluation"]


def _need_budget(name: str, budget: int, minimum: int) -> int:
    if budget < minimum:
        raise BudgetTooSmallError(f"plan {name!r} needs at least {minimum:,} teacher queries (one per image), but the "
                                  f"budget is {budget:,}")
    return budget


def _soft_step(oracle: Any, n: int, labeling: Any, budget: Optional[int], on: str = "images",
               prior: Any = None) -> PlanStep:
    """The ``db3`` step: ``queries_per_target`` as given, else what the budget leaves per image and other class."""
    options = dict(labeling.options)
    probe = create_source("db3", labeler=labeling.labeler, options=options, prior=prior).build(oracle, 0)
    refs = labeling.references_per_class > 0
    if probe.uses_queries and budget is not None and "queries_per_target" not in options:
        searched = getattr(probe, "searched_per_sample", lambda: probe.num_classes - 1)()
        overhead = probe.queries_per_image(refs) - searched * int(getattr(probe, "queries_per_target", 0))  # selection
        qpt = (budget // max(1, n) - overhead) // searched
        if qpt < 1:
            raise BudgetTooSmallError(f"{labeling.labeler!r} needs at least {overhead + searched:,} queries per image "
                                      f"({n * (overhead + searched):,} in all) beyond the labels; the budget leaves "
                                      f"{budget:,}")
        options["queries_per_target"] = qpt
    unit = labeling.shard_size or default_shard_size(oracle.input_size or (1, 28, 28))
    step = PlanStep("db3", 0, "", {"labeler": labeling.labeler, "options": options, "on": on, "prior": prior,
                                   "references_per_class": labeling.references_per_class, "unit_size": unit})
    source = create_source("db3", **step.options)
    step.queries = source.cost(oracle, n)
    what = "pseudo sample" if on == "pseudo" else "image"
    step.why = f"{labeling.labeler} soft labels: " + source.build(oracle, 0).describe_cost(refs).replace("image", what)
    return step


def make_plan(name: str, oracle: Any, num_images: Optional[int], *, budget: Optional[int] = None,
              labeling: Any = None, zero_shot: Any = None, prior: Any = None, evaluation: int = 0) -> Plan:
    """Returns plan ``name`` for ``num_images`` images (``None``: zero-shot) within ``budget`` queries.

    Args:
        name: one of :data:`PLANS`.
        oracle: the teacher (its classes size the plan; nothing is asked).
        num_images: images to learn from, or ``None``.
        budget: the most queries for the whole job, ``evaluation`` included.
        labeling: a :class:`~db3_timm.transfer.build.LabelingConfig` (``paper`` and ``zsdb3``).
        zero_shot: a :class:`~db3_timm.transfer.build.ZeroShotConfig` (``zsdb3``).
        prior: an optional white-box surrogate for ``mbd``.
        evaluation: test images the teacher is scored on (one query each).

    Raises:
        BudgetTooSmallError: the budget cannot pay for the plan's least useful version.
    """
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r}; plans: {', '.join(PLANS)}")
    zero_shot_plan = name in ZERO_SHOT_PLANS
    if (num_images is None) != zero_shot_plan:
        raise ValueError(f"plan {name!r} {'learns from no images' if zero_shot_plan else 'needs images'}; "
                         f"use {'images=None' if zero_shot_plan else 'plan synth, zsdb3 or noise without images'}")
    spend = None if budget is None else budget - evaluation
    if spend is not None and spend < 0:
        raise BudgetTooSmallError(f"scoring the teacher on {evaluation:,} test images alone needs {evaluation:,} "
                                  f"queries; the budget is {budget:,}")
    if num_images is not None:
        steps = _real_steps(name, oracle, num_images, spend, labeling, prior)
    elif name == "synth":
        steps = _synth_steps(spend, zero_shot)
    elif name == "noise":
        steps = _noise_steps(DEFAULT_ZERO_SHOT_QUERIES if spend is None else spend, zero_shot)
    else:
        steps = _zero_shot_steps(oracle, spend, labeling, zero_shot)
    if evaluation:
        steps.append(PlanStep("evaluation", evaluation, "the teacher's accuracy on the test images"))
    return Plan(name, steps, budget, train_rows="soft" if name == "paper" else "all")


def _real_steps(name: str, oracle: Any, n: int, spend: Optional[int], labeling: Any, prior: Any) -> List[PlanStep]:
    steps = [PlanStep("hard", n, f"the teacher's label of each of the {n:,} images")]
    if name == "hard":
        return steps
    if name in ("paper", "db3"):
        return steps + [_soft_step(oracle, n, labeling, None if spend is None else spend - n, prior=prior)]
    if spend is None:  # no budget given: a modest default, printed with the plan before anything is spent
        spend = DEFAULT_QUERIES_PER_IMAGE * n
        steps[0].why += f" (no budget given: {DEFAULT_QUERIES_PER_IMAGE} queries per image in all)"
    rest = _need_budget(name, spend, n) - n
    if rest == 0:  # a budget of one query per image buys the labels, and that is the plan
        return steps
    if name == "mixes":
        return steps + [PlanStep("mixes", rest, "teacher-labelled mixes of two images")]
    augment = rest // 2
    return steps + [PlanStep("augment", augment, "teacher-labelled flips, shifts, rotations and contrast changes"),
                    PlanStep("mixes", rest - augment, "teacher-labelled mixes of two images")]


def _synth_steps(spend: Optional[int], zero_shot: Any) -> List[PlanStep]:
    from ..generators.synth import SynthConfig

    per = SynthConfig(**zero_shot.synth).queries_per_round
    note = ""
    if spend is None:
        spend, note = DEFAULT_ZERO_SHOT_QUERIES, f" (no budget given: {DEFAULT_ZERO_SHOT_QUERIES:,} queries in all)"
    rounds = int(spend * (1 - zero_shot.mix_share)) // per
    if rounds < 1:
        raise BudgetTooSmallError(f"plan 'synth' needs at least one generator round of {per:,} queries "
                                  f"(queries_per_round) beyond the mixes' share; the budget leaves {spend:,}")
    options = dict(zero_shot.synth)
    share = NOISE_SHARE if zero_shot.noise_share is None else zero_shot.noise_share
    noise = int(share * rounds)
    if noise:
        options["noise_rounds"] = noise
    if zero_shot.noise_prior not in (None, "smooth"):
        options.setdefault("noise_prior", zero_shot.noise_prior)
    prior = options.get("noise_prior", "smooth")
    what = f"{rounds:,} rounds of {per:,} samples the teacher labels" + (
        f", the first {noise:,} {prior} noise, the rest from the generator" if noise else " from the generator")
    what += "; between rounds the generator and a working student train (compute beyond the teacher's time)"
    steps = [PlanStep("synth", rounds * per, what + note, {"options": options})]
    rest = spend - rounds * per
    if rest and zero_shot.mix_share > 0:
        steps.append(PlanStep("mixes", rest, "teacher-labelled mixes of two generated samples", {"on": "pseudo"}))
    return steps


def _noise_steps(spend: int, zero_shot: Any) -> List[PlanStep]:
    kids = int(spend * zero_shot.offspring_share) if zero_shot is not None else 0
    prior = getattr(zero_shot, "noise_prior", None) or NOISE_PLAN_PRIOR
    options = {} if prior == "smooth" else {"prior": prior}
    if not kids:
        return [PlanStep("noise", spend, f"teacher-labelled {prior} noise, no model trained while asking", options)]
    return [PlanStep("noise", spend - kids, f"teacher-labelled {prior} noise, the first parents",
                     {"keep_pool": True, **options}),
            PlanStep("offspring", kids, "teacher-labelled children of two samples the teacher gave the same label "
                                        "(a blend plus smooth noise), in 4 generations; no model trained")]


def _zero_shot_steps(oracle: Any, spend: Optional[int], labeling: Any, zero_shot: Any) -> List[PlanStep]:
    options = {"samples_per_class": zero_shot.samples_per_class, "iterations": zero_shot.iterations,
               "queries_per_iteration": zero_shot.queries_per_iteration, "step": zero_shot.step,
               "step_growth": zero_shot.step_growth, "generator": zero_shot.generator, "options": zero_shot.options}
    gen = create_source("zsdb3", **options)
    cost = gen.cost(oracle)
    steps = [PlanStep("zsdb3", cost, f"{zero_shot.samples_per_class} pseudo samples per class grown from noise, "
                                     f"{zero_shot.iterations} iterations of {zero_shot.queries_per_iteration} queries",
                      options)]
    classes = gen.build(oracle, 0).num_classes
    pseudo = zero_shot.samples_per_class * classes
    soft = _soft_step(oracle, pseudo, labeling, None, on="pseudo")
    if spend is not None and cost + soft.queries > spend:
        raise BudgetTooSmallError(f"plan 'zsdb3' needs up to {cost + soft.queries:,} queries ({cost:,} to generate, "
                                  f"{soft.queries:,} to soft-label); the budget leaves {spend:,}")
    return steps + [soft]
