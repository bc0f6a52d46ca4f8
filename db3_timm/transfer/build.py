"""Transfer sets: what the student learns from, built by running a plan's query sources with every answer kept.

:func:`build_transfer_set` attaches a :class:`~db3_timm.store.QueryStore` to the teacher and runs the plan's
sources (:mod:`db3_timm.sources`) in order; the store's folder *is* the transfer set, a saved
``datasets.DatasetDict`` whose rows carry what the student trains on (see :mod:`db3_timm.store`):
every answer as a hard-labelled row, and soft-labelled rows (``kd_weight`` 1) from DB3 labelers. Its
``manifest.json`` counts every teacher query by source.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .._checks import check_class_names, check_int, check_number
from .._disk import dataset_card, is_dataset_dict, quiet_datasets, read_columns
from .._io import (ConfigMismatchError, PathLike, canonical, config_diff, read_json, run_lock, tensor_fingerprint,
                   write_json_atomic)
from .._registry import create_generator, create_labeler
from ..oracle import LabelOracle
from ..sources.base import SourceContext
from ..store import QueryStore
from ..version import __version__
from .label import FORMAT as LABELED_FORMAT
from .label import MANIFEST_NAME
from .plan import ZERO_SHOT_PLANS

__all__ = ["LabelingConfig", "ZeroShotConfig", "TransferSet", "build_transfer_set", "generate_zero_shot", "load_transfer_set",
           "ConfigMismatchError", "TRANSFER_FORMAT"]

TRANSFER_FORMAT = "db3-transfer-set"


@dataclass
class LabelingConfig:
    """How images are soft-labelled (the paper's DB3KD step).

    Attributes:
        labeler: a registered labeler (``sd``, ``bd``, ``mbd``, ...).
        options: its options (``queries_per_target``, ``probes``, ...).
        references_per_class: images per class the labeler uses as references (teacher-checked once).
        shard_size: rows per shard (the unit of resumption); ``None``: 512 small images, fewer big ones (see
            :func:`~db3_timm.transfer.label.default_shard_size`).
    """

    labeler: str = "mbd"
    options: Dict[str, Any] = field(default_factory=dict)
    references_per_class: int = 10
    shard_size: Optional[int] = None

    def __post_init__(self) -> None:
        from .._registry import is_labeler, list_labelers

        if not is_labeler(self.labeler):
            raise ValueError(f"unknown labeler {self.labeler!r}; known labelers: {', '.join(list_labelers())}")
        check_int("references_per_class", self.references_per_class, 0)
        if self.shard_size is not None:
            check_int("shard_size", self.shard_size, 1)
        if self.labeler == "sd" and self.references_per_class == 0:
            raise ValueError("the 'sd' labeler measures distances to references: references_per_class must be at least 1")

    def build(self, oracle: LabelOracle, seed: int, **extra: Any) -> Any:
        """Returns the labeler (its options checked now, before any query)."""
        return create_labeler(self.labeler, oracle, seed=seed, **{**self.options, **extra})


@dataclass
class ZeroShotConfig:
    """How pseudo samples are grown without real images (ZSDB3KD).

    Attributes:
        generator: a registered generator (``zsdb3``).
        samples_per_class, iterations, queries_per_iteration, step, step_growth: :meth:`generate` settings.
        options: generator options (``start``, ``start_pool``, ``mixes``, ``max_init_queries``, ...).
        pool_labeler: labeler for the start pool (``sd``: distances to the pseudo samples, no query).
        synth: options of the ``synth`` generator (plan ``synth``; see
            :class:`~db3_timm.generators.synth.SynthConfig`).
        mix_share: share of a ``synth`` plan's budget spent on teacher-labelled mixes of the generated samples.
        noise_share: share of a ``synth`` plan's rounds that are smooth noise, before the generator's (the
            generator's ``noise_rounds``, sized to the budget). ``None``: 0.4 (0 measured worse, 0.2 no different;
            ``benchmarks/RESULTS.md``); a value given keeps ``synth`` as the default plan.
        offspring_share: share of a ``noise`` plan's budget spent on teacher-labelled children of same-label noise
            samples (the ``offspring`` source), bred in 4 generations after the noise.
        noise_prior: what the noise of the ``noise`` plan and of ``synth``'s noise rounds is drawn from, a
            :data:`~db3_timm.generators.priors.NOISE_PRIORS` name: ``"smooth"``, ``"stretched"`` (tall and wide
            grids too), or one a plugin added to it. ``None``: each plan's measured best, ``"stretched"`` for
            ``noise`` and ``"smooth"`` for ``synth``'s noise rounds (``docs/zero_shot.md``).
    """

    generator: str = "zsdb3"
    samples_per_class: int = 100
    iterations: int = 10
    queries_per_iteration: int = 500
    step: float = 0.5
    step_growth: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)
    pool_labeler: str = "sd"
    synth: Dict[str, Any] = field(default_factory=dict)
    mix_share: float = 0.0
    noise_share: Optional[float] = None
    offspring_share: float = 0.0
    noise_prior: Optional[str] = None

    def __post_init__(self) -> None:
        from .._registry import is_generator, list_generators
        from ..generators.synth import SynthConfig
        from ..generators.priors import noise_prior

        if self.noise_prior is not None:
            noise_prior(self.noise_prior)

        SynthConfig(**self.synth)
        check_number("mix_share", self.mix_share, low=0, high=1, high_open=True)
        if self.noise_share is not None:
            check_number("noise_share", self.noise_share, low=0, high=1)
        check_number("offspring_share", self.offspring_share, low=0, high=1, high_open=True)
        if not is_generator(self.generator):
            raise ValueError(f"unknown generator {self.generator!r}; known generators: {', '.join(list_generators())}")
        check_int("samples_per_class", self.samples_per_class, 1)
        check_int("iterations", self.iterations, 0)
        check_int("queries_per_iteration", self.queries_per_iteration, 20)

    def build(self, oracle: LabelOracle, seed: int) -> Any:
        """Returns the generator (its options checked now, before any query)."""
        return create_generator(self.generator, oracle, seed=seed, **self.options)


@dataclass
class TransferSet:
    """A transfer set ready to train on.

    Attributes:
        rows: the ``datasets.Dataset`` of rows (``image``, ``label``, ``soft_logits``, ``kd_weight``, provenance).
        folder: where it lives on disk.
        queries: teacher queries that went into it, by source, with ``total``.
        info: provenance (the plan's steps, the sources' settings, what they produced).
    """

    rows: Any
    folder: Path
    queries: Dict[str, int]
    info: Dict[str, Any]

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        return tuple(self.rows.features["image"].shape)

    @property
    def zero_shot(self) -> bool:
        """Whether it was grown without real images (by a zero-shot plan)."""
        return self.info.get("plan") in ZERO_SHOT_PLANS

    @property
    def num_classes(self) -> int:
        """Width of the label space."""
        return self.rows.features["label"].num_classes

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Returns ``image`` (as stored: float32, or uint8), ``label``, ``soft_logits``, ``kd_weight`` as tensors in memory."""
        return read_columns(self.rows, ["image", "label", "soft_logits", "kd_weight"])


def _queries_by_source(store: QueryStore) -> Dict[str, int]:
    queries: Dict[str, int] = {}
    for name, record in sorted(store.committed().items()):
        source = name.rsplit("-", 1)[0]
        queries[source] = queries.get(source, 0) + int(record["queries"])
    queries["total"] = sum(queries.values())
    return queries


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: f"<{type(o).__name__}>"))


def build_transfer_set(
    oracle: LabelOracle,
    plan: Any,
    out_dir: PathLike,
    *,
    images: Optional[torch.Tensor] = None,
    class_names: Optional[Sequence[str]] = None,
    seed: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> TransferSet:
    """Runs ``plan``'s sources with a :class:`~db3_timm.store.QueryStore` in ``out_dir`` attached to ``oracle``.

    Every answer the teacher gives becomes a row; soft-labelled rows join them. Each source works in
    deterministic units, so running the same call again continues a killed job where it stopped and never
    stores an answer twice. The folder is a saved ``datasets.DatasetDict`` once every step is done.

    Returns:
        The :class:`TransferSet`.

    Raises:
        RunLockedError: another job is building into ``out_dir`` right now (nothing was spent or cleaned).
        ConfigMismatchError: ``out_dir`` holds a job with another teacher, plan or set of images.
    """
    from .._distributed import process_state

    out = Path(out_dir)
    state = process_state(accelerator)
    sources = plan.sources()  # every option checked before the first query
    shape = oracle.input_size if images is None else tuple(images.shape[1:])
    if shape is None:
        raise ValueError("the teacher's input size is unknown: pass input_size= to the oracle (or images)")
    class_names = check_class_names(class_names if class_names is not None else getattr(oracle, "class_names", None),
                                    oracle.num_classes)
    names = class_names or [str(i) for i in range(oracle.num_classes)]
    image_dtype = "uint8" if getattr(oracle, "quantize", None) == "uint8" else "float32"
    job = {"plan": plan.name, "steps": [{"source": st.source, "queries": st.queries, **src.describe(oracle, seed)}
                                        for st, src in sources],
           "seed": seed, "teacher": str(getattr(oracle, "identity", oracle.name)),
           "images": None if images is None else tensor_fingerprint(images), "class_names": names,
           "image_dtype": image_dtype}
    with run_lock(out, "transfer-set job", state):  # before the store cleans up what a killed job left
        store = QueryStore(out, image_shape=shape, class_names=names, clean=state.process_index == 0,
                           image_dtype=image_dtype)
        ctx = SourceContext(oracle, store, None if images is None else images.detach().cpu(), len(names), seed,
                            state=state, progress=progress, extra={"class_names": class_names})
        return _build(oracle, store, ctx, sources, plan, job, state)


def _build(oracle: LabelOracle, store: QueryStore, ctx: SourceContext, sources: Any, plan: Any, job: Dict[str, Any],
           state: Any) -> TransferSet:
    """Runs the sources into ``store`` (the folder is locked by the caller); returns the finished transfer set."""
    out = store.out
    if state.process_index == 0:  # the main process records a new job first; then everyone checks against it
        _check_job(out, job, write=True)
        store.committed(verify=True)  # a damaged unit is forgotten, so its source asks it again
    state.wait_for_everyone()
    _check_job(out, job, write=False)
    spent: Dict[str, int] = {}
    with store.attached(oracle):
        for step, source in sources:
            budget_left = oracle.budget
            spent[step.source] = source.run(ctx, step.queries)
            if budget_left is not None and oracle.queries > budget_left:  # pragma: no cover (the oracle refuses first)
                raise RuntimeError("a source overspent its budget")
    info = {"plan": plan.name, "steps": [_jsonable({"source": s.source, "queries": s.queries, "why": s.why,
                                                    "config": src.config()}) for s, src in sources],
            "generator": ctx.extra.get("generator"), "missing_classes": ctx.extra.get("missing_classes")}
    info["labeler"] = next((st["config"].get("labeler") for st in info["steps"] if st["source"] == "db3"), None)
    if state.process_index == 0:
        _finish(store, info)
    state.wait_for_everyone()
    return load_transfer_set(out)


def generate_zero_shot(oracle: LabelOracle, out_dir: PathLike, zero_shot: ZeroShotConfig, labeling: LabelingConfig, *,
                       budget: Optional[int] = None, class_names: Optional[Sequence[str]] = None, seed: int = 0,
                       accelerator: Any = None, progress: bool = True) -> TransferSet:
    """Builds the zero-shot transfer set of plan ``zsdb3``: pseudo samples grown from noise, soft-labelled by
    ``labeling`` against each other, with every answer of the generation kept as a row.

    Returns:
        The :class:`TransferSet` (``out_dir`` also holds ``grids/``, ``robustness.png``, ``diversity.json`` and the
        resumable ``generation/`` state).
    """
    from .plan import make_plan

    plan = make_plan("zsdb3", oracle, None, budget=budget, labeling=labeling, zero_shot=zero_shot)
    plan.check()
    return build_transfer_set(oracle, plan, out_dir, class_names=class_names, seed=seed, accelerator=accelerator,
                              progress=progress)


def _check_job(out: Path, job: Dict[str, Any], write: bool) -> None:
    """Refuses to continue another job's folder (its rows would mix two teachers or two plans); records a new one."""
    job = _jsonable(job)
    path = out / "job.json"
    if path.is_file():
        old = read_json(path, "job record")
        if canonical(old) != canonical(job):
            raise ConfigMismatchError(f"{str(out)!r} holds a job with other settings ({config_diff(old, job)}); rerun "
                                      f"with the original settings to resume, or choose another folder")
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, job)


def _finish(store: QueryStore, info: Dict[str, Any]) -> None:
    queries = _queries_by_source(store)
    rows = store.finish(dataset_card(
        "DB3 transfer set", f"Every answer a label-only teacher gave while this transfer set was built "
        f"({queries['total']:,} queries), as training rows; soft-labelled rows carry kd_weight 1.", [
            ("image", f"Array3D {store.image_shape} {store.image_dtype}", "the exact pixels the teacher answered"),
            ("label", "ClassLabel", "the teacher's label (a label-only query), not ground truth"),
            ("soft_logits", "list of float32", "soft-label logits z (train on softmax(z / T)); zeros on hard rows"),
            ("kd_weight", "float32", "weight of the soft-label term for the row (0: hard label only)"),
            ("source", "string", "the component that asked (hard, mixes, mbd, zsdb3, ...)"),
            ("unit", "string", "the unit of work within the job"),
            ("call", "int32", "the oracle call within the unit (-1: a soft-labelled row, no new query)")],
        json.dumps({"queries": queries, **info}, indent=2)))
    write_json_atomic(store.out / MANIFEST_NAME, {"format": TRANSFER_FORMAT, "db3_timm_version": __version__,
                                                  "queries": queries, "num_rows": len(rows), "complete": True,
                                                  "info": info})


def load_transfer_set(folder: PathLike) -> TransferSet:
    """Opens a transfer set (``db3 distill`` / ``db3 generate`` output) or a ``db3 label`` output (all rows soft).

    Raises:
        FileNotFoundError / ValueError: the folder is no finished db3 dataset (the message says what it is).
    """
    import datasets

    out = Path(folder)
    manifest = read_json(out / MANIFEST_NAME, "manifest") if (out / MANIFEST_NAME).is_file() else None
    if manifest is None or manifest.get("format") not in (TRANSFER_FORMAT, LABELED_FORMAT):
        raise FileNotFoundError(f"{str(out)!r} is not a db3 transfer set or labelled dataset (no db3 manifest.json); "
                                f"make one with `db3 distill`, `db3 generate` or `db3 label`")
    if not manifest.get("complete") or not is_dataset_dict(out):
        raise ValueError(f"{str(out)!r} is not finished yet; rerun the command that writes it to complete it")
    with quiet_datasets():
        ds = datasets.load_from_disk(str(out))["train"]
    if manifest["format"] == LABELED_FORMAT:
        ds = ds.select_columns(["image", "label", "soft_logits"]).add_column("kd_weight", [1.0] * len(ds))
        ds = ds.add_column("source", ["labelled"] * len(ds))
        total = int(manifest["queries"]["total"])
        return TransferSet(ds, out, {"labelling": total, "total": total},
                           {"plan": "labelled", "labeler": manifest["config"]["labeler"], "generator": None})
    return TransferSet(ds, out, dict(manifest["queries"]), dict(manifest["info"]))
