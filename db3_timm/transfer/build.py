"""The one way transfer sets are built: real images soft-labelled by a DB3 labeler, or pseudo samples grown
from noise and labelled the same way; both kept on disk, resumable, merged into one dataset.

A merged transfer set (:func:`write_transfer_set`) is a db3 dataset folder (see :mod:`~db3_timm.transfer.disk`)
whose rows carry what the student trains on::

    image        Array3D (C, H, W) float32   the exact pixels the teacher answered, in [0, 1]
    label        ClassLabel                  the teacher's label
    soft_logits  C float32                   soft-label logits (zeros where the row has only a hard label)
    kd_weight    float32                     weight of the soft-label term for the row (0: hard label only)
    source       string                      which part of the job the row comes from

and a ``manifest.json`` counting every teacher query that went into it (generation and labelling).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._checks import check_int
from .._io import PathLike, canonical, digest, read_json, write_json_atomic
from .._registry import create_generator, create_labeler
from ..labelers.base import References
from ..oracle import LabelOracle
from ..version import __version__
from .disk import ShardedDataset, dataset_card, is_dataset_dict
from .label import FORMAT as LABELED_FORMAT
from .label import MANIFEST_NAME, label_dataset, read_manifest

__all__ = ["LabelingConfig", "ZeroShotConfig", "TransferSet", "transfer_features", "label_real_images",
           "generate_zero_shot", "write_transfer_set", "load_transfer_set", "references_per_class", "TRANSFER_FORMAT"]

TRANSFER_FORMAT = "db3-transfer-set"
_ROWS_PER_SHARD = 16384


@dataclass
class LabelingConfig:
    """How images are soft-labelled (the paper's DB3KD step).

    Attributes:
        labeler: a registered labeler (``sd``, ``bd``, ``mbd``, ...).
        options: its options (``queries_per_target``, ``probes``, ...).
        references_per_class: images per class the labeler uses as references (teacher-checked once).
        shard_size: rows per shard (the unit of resumption).
    """

    labeler: str = "mbd"
    options: Dict[str, Any] = field(default_factory=dict)
    references_per_class: int = 10
    shard_size: int = 512

    def __post_init__(self) -> None:
        from .._registry import is_labeler, list_labelers

        if not is_labeler(self.labeler):
            raise ValueError(f"unknown labeler {self.labeler!r}; known labelers: {', '.join(list_labelers())}")
        check_int("references_per_class", self.references_per_class, 0)
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
    """

    generator: str = "zsdb3"
    samples_per_class: int = 100
    iterations: int = 10
    queries_per_iteration: int = 500
    step: float = 0.5
    step_growth: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)
    pool_labeler: str = "sd"

    def __post_init__(self) -> None:
        from .._registry import is_generator, list_generators

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
        rows: ``datasets.Dataset`` in torch format with ``image``, ``label``, ``soft_logits``, ``kd_weight``.
        folder: where it lives on disk.
        queries: teacher queries that went into it, by part, with ``total``.
        info: provenance (parts, their rows and sources).
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
    def num_classes(self) -> int:
        """Width of the label space."""
        return self.rows.features["label"].num_classes

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Returns every column as one tensor (``image``, ``label``, ``soft_logits``, ``kd_weight``), in memory."""
        return dict(self.rows.with_format("torch", columns=["image", "label", "soft_logits", "kd_weight"])[:])


def transfer_features(image_shape: Sequence[int], class_names: Sequence[str]) -> Any:
    """Returns the ``datasets.Features`` of a merged transfer set (see the module docstring)."""
    import datasets
    from datasets import Array3D, ClassLabel, Features, Value

    return Features({
        "image": Array3D(shape=tuple(int(s) for s in image_shape), dtype="float32"),
        "label": ClassLabel(names=[str(c) for c in class_names]),
        "soft_logits": datasets.List(Value("float32"), length=len(class_names)),
        "kd_weight": Value("float32"),
        "source": Value("string"),
    })


def references_per_class(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Returns the indices of the first ``k`` samples of every class, in dataset order (a labeler's references)."""
    picked = [torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------- writing a merged set
def _part_columns(ds: Any, source: str, kd_weight: float, start: int, stop: int) -> Dict[str, Any]:
    rows = ds.with_format("numpy", columns=["image", "label", "soft_logits"])[start:stop]
    n = len(rows["label"])
    return {"image": rows["image"].astype("float32"), "label": rows["label"],
            "soft_logits": rows["soft_logits"].astype("float32"), "kd_weight": [float(kd_weight)] * n,
            "source": [source] * n}


def write_transfer_set(out_dir: PathLike, parts: Sequence[Tuple[str, Any, float]], queries: Dict[str, int],
                       info: Dict[str, Any]) -> "TransferSet":
    """Merges labelled datasets into one transfer set folder and returns it (a repeated call with the same
    parts finds it written).

    Args:
        out_dir: the folder (a db3 dataset folder plus ``manifest.json``).
        parts: ``(source name, datasets.Dataset with image/label/soft_logits, kd weight of its rows)``.
        queries: teacher queries by part (``total`` is added).
        info: provenance recorded in the manifest.
    """
    out = Path(out_dir)
    first = parts[0][1]
    features = transfer_features(first.features["image"].shape, first.features["label"].names)
    queries = {**{k: int(v) for k, v in queries.items() if k != "total"}}
    queries["total"] = sum(queries.values())
    manifest = {"format": TRANSFER_FORMAT, "db3_timm_version": __version__, "queries": queries,
                "parts": [{"source": s, "rows": len(d), "kd_weight": w} for s, d, w in parts], "info": canonical(info)}
    shards = ShardedDataset(out, features, digest(manifest))
    names: List[str] = []
    done = shards.finished()
    for source, ds, weight in parts:
        for k in range(math.ceil(len(ds) / _ROWS_PER_SHARD)):
            name = f"{source}-{k:05d}"
            names.append(name)
            if name not in done:
                shards.commit(name, _part_columns(ds, source, weight, k * _ROWS_PER_SHARD, (k + 1) * _ROWS_PER_SHARD))
    rows = sum(len(d) for _, d, _ in parts)
    summary = (f"{rows} rows for distilling a student from a label-only teacher: "
               + ", ".join(f"{len(d)} from {s}" for s, d, _ in parts) + f" ({queries['total']:,} teacher queries).")
    import json

    shards.finish(names, dataset_card("DB3 transfer set", summary, [
        ("image", "Array3D float32", "the exact pixels the teacher answered, in [0, 1]"),
        ("label", "ClassLabel", "the teacher's label (a label-only query), not ground truth"),
        ("soft_logits", "list of float32", "soft-label logits z (train on softmax(z / T)); zeros on hard-only rows"),
        ("kd_weight", "float32", "weight of the soft-label term for the row (0: hard label only)"),
        ("source", "string", "which part of the job made the row")], json.dumps(manifest, indent=2)))
    write_json_atomic(out / MANIFEST_NAME, {**manifest, "num_rows": rows, "complete": True})
    return load_transfer_set(out)


def load_transfer_set(folder: PathLike) -> TransferSet:
    """Opens a merged transfer set, or a ``db3 label`` / :func:`label_dataset` output (every row soft-labelled).

    Raises:
        FileNotFoundError / ValueError: the folder is no finished db3 dataset (the message says what it is).
    """
    import datasets

    from .disk import quiet_datasets

    out = Path(folder)
    manifest = read_json(out / MANIFEST_NAME, "manifest") if (out / MANIFEST_NAME).is_file() else None
    if manifest is None or manifest.get("format") not in (TRANSFER_FORMAT, LABELED_FORMAT):
        raise FileNotFoundError(f"{str(out)!r} is not a db3 transfer set or labelled dataset (no db3 manifest.json); "
                                f"make one with `db3 label`, `db3 generate` or `db3 distill`")
    if not manifest.get("complete") or not is_dataset_dict(out):
        raise ValueError(f"{str(out)!r} is not finished yet; rerun the command that writes it to complete it")
    with quiet_datasets():
        ds = datasets.load_from_disk(str(out))["train"]
    if manifest["format"] == LABELED_FORMAT:
        ds = ds.add_column("kd_weight", [1.0] * len(ds)).add_column("source", ["labelled"] * len(ds))
        queries = {"labelling": int(manifest["queries"]["total"]), "total": int(manifest["queries"]["total"])}
        info = {"parts": [{"source": "labelled", "rows": len(ds), "kd_weight": 1.0}],
                "labeler": manifest["config"]["labeler"]}
    else:
        queries, info = dict(manifest["queries"]), {"parts": manifest["parts"], **manifest.get("info", {})}
    return TransferSet(ds.with_format("torch"), out, queries, info)


# ---------------------------------------------------------------------- real images
def label_real_images(
    oracle: LabelOracle,
    images: torch.Tensor,
    out_dir: PathLike,
    labeling: LabelingConfig,
    *,
    dataset_labels: Optional[torch.Tensor] = None,
    class_names: Optional[Sequence[str]] = None,
    seed: int = 0,
    prior: Any = None,
    accelerator: Any = None,
    progress: bool = True,
) -> TransferSet:
    """Soft-labels ``images`` with ``labeling`` into ``out_dir/labels`` and returns them as a transfer set.

    References: with ``dataset_labels``, the first ``references_per_class`` images of each class (kept where
    the teacher agrees); without, the first ``references_per_class * C`` images, labelled by the teacher.

    Returns:
        The :class:`TransferSet` (``out_dir`` holds the merged set; rerunning resumes).
    """
    out = Path(out_dir)
    if is_dataset_dict(out) and (out / MANIFEST_NAME).is_file():
        return load_transfer_set(out)
    labeler = labeling.build(oracle, seed, **({"prior": prior} if prior is not None else {}))
    k = labeling.references_per_class
    refs = ref_labels = None
    if k > 0 and dataset_labels is not None:
        idx = references_per_class(dataset_labels, labeler.num_classes, k)
        refs, ref_labels = images[idx], dataset_labels[idx]
    elif k > 0:
        refs = images[: k * labeler.num_classes]
    ds = label_dataset(labeler, images, out / "labels", references=refs, dataset_labels=ref_labels,
                       shard_size=labeling.shard_size, seed=seed, accelerator=accelerator, progress=progress,
                       class_names=class_names)
    spent = read_manifest(out / "labels")["queries"]["total"]
    return _merge_on_main(accelerator, out, [("labelled", ds, 1.0)], {"labelling": spent},
                          {"labeler": labeler.config(), "labeling": asdict(labeling)})


def _merge_on_main(accelerator: Any, out: Path, parts: Sequence[Tuple[str, Any, float]], queries: Dict[str, int],
                   info: Dict[str, Any]) -> TransferSet:
    from .._distributed import process_state

    state = process_state(accelerator)
    if state.is_main_process:
        write_transfer_set(out, parts, queries, info)
    state.wait_for_everyone()
    return load_transfer_set(out)


# ---------------------------------------------------------------------- no real images
def _generate(oracle: LabelOracle, out: Path, zs: ZeroShotConfig, seed: int, progress: bool) -> None:
    """Main process: grows (or resumes) the pseudo samples; writes grids, the robustness curve, diversity."""
    from ..report import diversity_report, plot_curve, save_class_grids

    gen = zs.build(oracle, seed)
    pseudo = gen.generate(zs.samples_per_class, zs.iterations, zs.queries_per_iteration, step=zs.step,
                          step_growth=zs.step_growth, out_dir=out / "generation", progress=progress)
    save_class_grids(pseudo.images, pseudo.labels, out / "grids")
    if zs.iterations:
        plot_curve({"mean distance to the nearest boundary": pseudo.robustness.nanmean(1).tolist()},
                   out / "robustness.png", xlabel="push-away iteration", ylabel="L2 distance (pixel space)",
                   title="How far pseudo samples sit from the teacher's nearest decision boundary")
    write_json_atomic(out / "diversity.json", diversity_report(pseudo.images, pseudo.labels, gen.num_classes))
    write_json_atomic(out / "generation.json", {"generator": gen.config(), "queries": pseudo.queries,
                                                "missing_classes": pseudo.missing_classes,
                                                "mean_robustness": pseudo.robustness.nanmean(1).tolist()})


def generate_zero_shot(
    oracle: LabelOracle,
    out_dir: PathLike,
    zs: ZeroShotConfig,
    labeling: LabelingConfig,
    *,
    class_names: Optional[Sequence[str]] = None,
    seed: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> TransferSet:
    """Grows pseudo samples with ``zs`` (main process), labels them with ``labeling`` (each other's references)
    and the start pool with ``zs.pool_labeler``, and merges both into one transfer set in ``out_dir``.

    Every label is the teacher's answer from the generation, so labelling asks no label twice; the
    manifest counts the generation's queries and the labelling's. Rerunning resumes every step.

    Returns:
        The :class:`TransferSet` (``out_dir/generation`` holds the resumable generation state).
    """
    from .._distributed import process_state

    out = Path(out_dir)
    if is_dataset_dict(out) and (out / MANIFEST_NAME).is_file():
        return load_transfer_set(out)
    labeler = labeling.build(oracle, seed)  # checked before the generation spends anything
    zs.build(oracle, seed)
    state = process_state(accelerator)
    if state.is_main_process:
        _generate(oracle, out, zs, seed, progress)
    state.wait_for_everyone()
    pseudo = zs.build(oracle, seed).generate(zs.samples_per_class, zs.iterations, zs.queries_per_iteration,
                                             step=zs.step, step_growth=zs.step_growth, out_dir=out / "generation",
                                             progress=False)
    refs = References(pseudo.images, pseudo.labels, 0)
    common = dict(shard_size=labeling.shard_size, seed=seed, accelerator=accelerator, progress=progress,
                  class_names=class_names)
    parts = [("pseudo", label_dataset(labeler, pseudo.images, out / "pseudo", references=refs,
                                      teacher_labels=pseudo.labels, **common), 1.0)]
    queries = {"generation": pseudo.total_queries, "pseudo_labelling": read_manifest(out / "pseudo")["queries"]["total"]}
    if pseudo.pool_images is not None and len(pseudo.pool_images):
        pool_labeler = create_labeler(zs.pool_labeler, oracle, seed=seed)
        parts.append(("pool", label_dataset(pool_labeler, pseudo.pool_images, out / "pool", references=refs,
                                            teacher_labels=pseudo.pool_labels, **common), 1.0))
        queries["pool_labelling"] = read_manifest(out / "pool")["queries"]["total"]
    info = {"generator": zs.build(oracle, seed).config(), "zero_shot": asdict(zs), "labeler": labeler.config(),
            "missing_classes": pseudo.missing_classes}
    return _merge_on_main(accelerator, out, parts, queries, info)
