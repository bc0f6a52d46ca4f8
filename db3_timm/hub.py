"""Publishing distilled students on the Hugging Face Hub.

:func:`save_student` writes a folder in timm's Hub format, so the student loads with
``timm.create_model('local-dir:PATH', pretrained=True)`` now and ``'hf-hub:ORG/NAME'`` once
pushed::

    out_dir/
      config.json         # timm: architecture, num_classes, pretrained_cfg (mean, std, input_size, ...)
      model.safetensors   # timm: the student's state dict
      README.md           # model card (YAML metadata + how it was distilled and how to use it)
      db3.json            # the StudentCard fields and preprocessing, for machines

:func:`push_student` uploads such a folder with the ``huggingface_hub`` API. Without a reachable
Hub (``HF_HUB_OFFLINE=1``, no network) it raises :class:`~db3_timm.oracle.HubUnavailableError`
saying where the folder is and how to push it later; it never pretends to have succeeded.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import numbers
import os
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ._checks import check_class_names
from ._io import write_json_atomic
from .oracle import HubUnavailableError
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

__all__ = [
    "StudentCard",
    "save_student",
    "push_student",
    "read_student_card",
    "validate_repo_id",
    "public_spec",
    "HubUnavailableError",
    "METHODS",
    "ACCURACY_KINDS",
    "CARD_NAME",
    "DB3_CARD_NAME",
    "REQUIRED_FILES",
    "PLACEHOLDER_REPO_ID",
]

METHODS: Tuple[str, ...] = ("db3kd", "zsdb3kd", "synth-kd", "label-kd")
"""``db3kd``: soft labels for real samples; ``zsdb3kd``: zero-shot, on pseudo samples grown from noise;
``synth-kd``: zero-shot, the teacher's labels of samples a generator network proposed; ``label-kd``: the
teacher's hard labels on real samples, their augmentations and mixes."""
ZERO_SHOT_METHODS: Tuple[str, ...] = ("zsdb3kd", "synth-kd")

ACCURACY_KINDS: Tuple[str, ...] = ("final", "best-val", "val-selected")
"""``final``: the last epoch's weights; ``best-val``: the epoch with the best accuracy on the reported split;
``val-selected``: the epoch with the best accuracy on a held-out validation set, scored on the reported split."""

CARD_NAME = "README.md"
DB3_CARD_NAME = "db3.json"
REQUIRED_FILES: Tuple[str, ...] = ("config.json", "model.safetensors", CARD_NAME)
"""Files :func:`push_student` requires in a folder (``db3.json`` is written too, but optional)."""

PLACEHOLDER_REPO_ID = "ORG/NAME"
"""Stands in the card's usage snippet until :func:`push_student` learns the real repo id."""

_DB3_FORMAT = "db3-student"
_DB3_FORMAT_VERSION = 1
# Hub rules: ORG/NAME, letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' or '..'.
_REPO_PART = re.compile(r"^(?![-.])(?!.*(?:--|\.\.))[A-Za-z0-9._-]{1,96}(?<![-.])$")
_METHOD_TEXT = {
    "db3kd": "DB3KD (decision-based black-box KD on real samples)",
    "zsdb3kd": "ZSDB3KD (zero-shot decision-based black-box KD on generated samples)",
    "synth-kd": "zero-shot KD from the teacher's labels of samples a generator network proposed (no real image)",
    "label-kd": "KD from the teacher's labels on real samples, their augmentations and mixes",
}


def validate_repo_id(repo_id: Any) -> str:
    """Checks that ``repo_id`` is a Hub model id of the form ``ORG/NAME``.

    Args:
        repo_id: the candidate id, e.g. ``"db3-org/fmnist-lenet5-half"``.

    Returns:
        ``repo_id`` unchanged.

    Raises:
        ValueError: naming the bad value and the expected form.
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts) or repo_id.endswith(".git"):
        raise ValueError(
            f"invalid Hub repo id {repo_id!r}: expected ORG/NAME, e.g. 'db3-org/fmnist-lenet5-half' "
            f"(letters, digits, '-', '_', '.'; at most 96 characters each; no leading or trailing '-' or '.', "
            f"no '--' or '..')"
        )
    return repo_id


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "~", ".")) or "\\" in text or Path(os.path.expanduser(text)).exists()


def public_spec(spec: str) -> str:
    """Returns ``spec`` (a model or dataset spec) without local paths: ``local-dir:/a/b/teacher`` -> ``local-dir:teacher``,
    ``idx:/data/fmnist`` -> ``idx:fmnist``, ``/x/y`` -> ``y``; Hub ids and registered names are kept."""
    if spec.startswith("torchvision:"):  # torchvision:NAME:ROOT -> torchvision:NAME
        return ":".join(spec.split(":")[:2])
    for prefix in ("local-dir:", "idx:", "hf:"):
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            if prefix == "hf:" and not _looks_local(rest):
                return spec  # a Hub dataset id
            return prefix + (Path(rest.rstrip("/\\")).name or "local")
    if ":" not in spec and _looks_local(spec):
        return Path(spec.rstrip("/\\")).name or "local"
    return spec


def _check_fraction(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1] or None, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1] (e.g. 0.912 for 91.2 %), got {value!r}")
    return float(value)


def _check_config(name: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of JSON-serialisable options, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable (it goes into db3.json): {err}") from None


@dataclass
class StudentCard:
    """How a student was distilled; rendered into ``README.md`` and ``db3.json`` by :func:`save_student`.

    Accuracies are fractions in ``[0, 1]``.

    Args:
        teacher: teacher id (e.g. ``hf-hub:org/name``); local paths are reduced to their last part, so a card
            never publishes where files live.
        dataset: dataset spec the student was distilled on (e.g. ``fashion-mnist``, ``hf:org/name``); paths are
            reduced the same way.
        queries: every teacher query the student cost (generation, labelling and evaluation together).
        query_breakdown: the same queries by step (they must add up to ``queries``).
        transfer_rows: rows of the transfer set the student trained on.
        hyperparameters: training settings (epochs, batch size, optimiser, temperature, ...).
        base_model: Hub id of the teacher when it lives on the Hub (default: read from ``teacher``).
        teacher_fingerprint: a fingerprint of the teacher's weights (identifies a local teacher without its path).
        plan: the query plan the transfer set followed (``default``, ``paper``, ...).
        method: one of :data:`METHODS`: ``"db3kd"`` (real samples; needs ``labeler``), ``"zsdb3kd"`` or
            ``"synth-kd"`` (zero-shot; need ``generator``), ``"label-kd"``.
        labeler: registered labeler name (``sd``, ``bd``, ``mbd``, ...).
        labeler_config: the labeler's options (JSON-serialisable).
        generator: registered generator name (``zsdb3``, ``synth``) of a zero-shot student.
        generator_config: the generator's options (JSON-serialisable).
        student_accuracy: the student's top-1 accuracy on ``eval_split``.
        teacher_accuracy: the teacher's top-1 accuracy on ``eval_split``.
        accuracy_kind: ``"final"`` (these are the last epoch's weights) or ``"best-val"`` (these are the
            weights of the epoch with the best accuracy on ``eval_split``, and that best is reported).
        eval_split: split the accuracies were measured on.
        architecture: timm architecture (default: read from the model by :func:`save_student`).
        repo_id: Hub id for the usage snippet (default: filled in by :func:`push_student`).
        dataset_id: Hub dataset id for the card metadata (default: ``NAME`` of ``hf:NAME``, else ``dataset``).
        license: license of the student weights (Hub license id).
        model_name: title of the card (default: ``{architecture} distilled from {teacher}``).
        notes: free text appended to the card.
    """

    teacher: str
    dataset: str
    queries: int
    query_breakdown: Dict[str, int] = field(default_factory=dict)
    transfer_rows: Optional[int] = None
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    base_model: Optional[str] = None
    teacher_fingerprint: Optional[str] = None
    plan: Optional[str] = None
    method: str = "db3kd"
    labeler: Optional[str] = None
    labeler_config: Dict[str, Any] = field(default_factory=dict)
    generator: Optional[str] = None
    generator_config: Dict[str, Any] = field(default_factory=dict)
    student_accuracy: Optional[float] = None
    teacher_accuracy: Optional[float] = None
    accuracy_kind: str = "final"
    eval_split: str = "test"
    architecture: Optional[str] = None
    repo_id: Optional[str] = None
    dataset_id: Optional[str] = None
    license: str = "apache-2.0"
    model_name: Optional[str] = None
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("teacher", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"StudentCard.{name} must be a non-empty string, got {getattr(self, name)!r}")
            setattr(self, name, public_spec(getattr(self, name)))
        if self.base_model is None and self.teacher.startswith("hf-hub:"):
            self.base_model = self.teacher.split(":", 1)[1]
        if self.query_breakdown and sum(int(v) for v in self.query_breakdown.values()) != self.queries:
            raise ValueError(f"StudentCard.query_breakdown {self.query_breakdown} adds up to "
                             f"{sum(int(v) for v in self.query_breakdown.values())}, not queries={self.queries}")
        if isinstance(self.queries, bool) or not isinstance(self.queries, numbers.Integral) or self.queries < 0:
            raise ValueError(f"StudentCard.queries must be a non-negative integer, got {self.queries!r}")
        self.queries = int(self.queries)
        if self.method not in METHODS:
            raise ValueError(f"StudentCard.method must be one of {METHODS}, got {self.method!r}")
        if self.method == "db3kd" and not self.labeler:
            raise ValueError("StudentCard.labeler is required for method 'db3kd' (e.g. 'mbd')")
        if self.method in ZERO_SHOT_METHODS and not self.generator:
            raise ValueError(f"StudentCard.generator is required for method {self.method!r}")
        if self.accuracy_kind not in ACCURACY_KINDS:
            raise ValueError(f"StudentCard.accuracy_kind must be one of {ACCURACY_KINDS}, got {self.accuracy_kind!r}")
        self.student_accuracy = _check_fraction("StudentCard.student_accuracy", self.student_accuracy)
        self.teacher_accuracy = _check_fraction("StudentCard.teacher_accuracy", self.teacher_accuracy)
        self.labeler_config = _check_config("StudentCard.labeler_config", self.labeler_config)
        self.hyperparameters = _check_config("StudentCard.hyperparameters", self.hyperparameters)
        self.query_breakdown = {str(k): int(v) for k, v in _check_config("StudentCard.query_breakdown", self.query_breakdown).items()}
        self.generator_config = _check_config("StudentCard.generator_config", self.generator_config)
        if self.repo_id is not None:
            validate_repo_id(self.repo_id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudentCard":
        """Builds a card from a dict, naming any unknown keys.

        Args:
            data: card fields (extra ``db3.json`` bookkeeping keys are not accepted here).

        Returns:
            The validated :class:`StudentCard`.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown StudentCard field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> Dict[str, Any]:
        """Returns the card fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def _as_card(card: Union[StudentCard, Mapping[str, Any]]) -> StudentCard:
    if isinstance(card, StudentCard):
        return dataclasses.replace(card)  # a copy: save_student fills in fields
    if isinstance(card, Mapping):
        return StudentCard.from_dict(card)
    raise TypeError(f"card must be a StudentCard or a dict of its fields, got {type(card).__name__}")


def _pct(value: Optional[float]) -> str:
    return "not reported" if value is None else f"{100.0 * value:.2f} %"


def _dataset_id(card: StudentCard) -> str:
    """The card metadata's dataset id: ``dataset_id``, else ``NAME`` of ``hf:NAME``, else ``dataset``."""
    return card.dataset_id or (card.dataset[3:] if card.dataset.startswith("hf:") else card.dataset)


def _card_metadata(card: StudentCard, title: str) -> Any:
    """The card's YAML metadata (a :class:`huggingface_hub.ModelCardData`)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = _dataset_id(card)
    eval_results = None
    if card.student_accuracy is not None:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=card.dataset,
                dataset_split=card.eval_split,
                metric_type="accuracy",
                metric_name=f"Top-1 accuracy ({card.accuracy_kind})",
                metric_value=round(card.student_accuracy, 6),
            )
        ]
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=card.license,
        tags=["image-classification", "timm", "knowledge-distillation", "db3kd"]
        + ([card.method] if card.method in ZERO_SHOT_METHODS else [])
        + ["black-box", "label-only-teacher"],
        datasets=[dataset_id],
        metrics=["accuracy"],
        model_name=title,
        eval_results=eval_results,
        base_model=card.base_model,
    )


def _accuracy_kind_text(card: StudentCard) -> str:
    return {
        "final": "final: the last epoch's weights (no checkpoint selection)",
        "best-val": f"best-val: the weights of the epoch with the best {card.eval_split} accuracy, which is the number "
                    f"reported (selected on this split, so optimistic if it is also the test split)",
        "val-selected": f"val-selected: the weights of the epoch with the best accuracy on held-out validation data, "
                        f"scored on the {card.eval_split} split",
    }[card.accuracy_kind]


def _card_rows(card: StudentCard, config: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The rows of the card's summary table."""
    pcfg = config.get("pretrained_cfg", {})
    rows = [
        ("Method", _METHOD_TEXT[card.method] + (f", plan `{card.plan}`" if card.plan else "")),
        ("Teacher (label-only)", f"`{card.teacher}`"),
    ]
    if card.labeler:
        rows.append(("Labeler", f"`{card.labeler}` `{json.dumps(card.labeler_config, sort_keys=True)}`"))
    if card.generator:
        rows.append(("Generator", f"`{card.generator}` `{json.dumps(card.generator_config, sort_keys=True)}`"))
    breakdown = ", ".join(f"{k} {v:,}" for k, v in card.query_breakdown.items())
    rows += [
        ("Teacher queries", f"{card.queries:,}" + (f" ({breakdown})" if breakdown else "")),
        ("Transfer set", "not recorded" if card.transfer_rows is None else f"{card.transfer_rows:,} rows"),
        ("Dataset", f"{card.dataset} (accuracy on the `{card.eval_split}` split)"),
        ("Student accuracy", _pct(card.student_accuracy)),
        ("Teacher accuracy", _pct(card.teacher_accuracy)),
        ("Which accuracy", _accuracy_kind_text(card)),
        ("Architecture", f"`{card.architecture}` ({config.get('num_classes')} classes)"),
        (
            "Input",
            f"{tuple(pcfg.get('input_size', ()))}, mean {tuple(pcfg.get('mean', ()))}, std {tuple(pcfg.get('std', ()))}",
        ),
    ]
    if card.teacher_fingerprint:
        rows.insert(2, ("Teacher weights", f"`{card.teacher_fingerprint}`"))
    if card.hyperparameters:
        rows.append(("Training", ", ".join(f"{k}={v}" for k, v in card.hyperparameters.items())))
    return rows


def _card_table(rows: List[Tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _labeler_option(card: StudentCard) -> str:
    return f" --labeler {card.labeler}" if card.labeler else ""


def _usage_sections(card: StudentCard, repo: str, *, db3_import: bool) -> str:
    """The card's "Use the student" and "Use it as a label-only teacher" sections."""
    reg = f"import db3_timm  # registers `{card.architecture}` with timm (pip install db3-timm)\n" if db3_import else ""
    return f"""## Use the student

```python
import timm
{reg}
model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
cfg = timm.data.resolve_model_data_config(model)   # mean/std/input size the student was trained with
transform = timm.data.create_transform(**cfg)
```

## Use it as a label-only teacher

Wrap it (or any timm model) in `db3_timm.LabelOracle`, which answers labels only and counts queries:

```python
from db3_timm import LabelOracle

oracle = LabelOracle.from_hub("hf-hub:{repo}", budget=100_000)
labels = oracle(images)  # images: float (N, C, H, W) in [0, 1]
```

or soft-label a dataset with the command line:

```bash
db3 label --teacher hf-hub:{repo} --data {card.dataset}{_labeler_option(card)} --out labels/
```
"""


def _reproduce_text(card: StudentCard) -> str:
    """For DB3KD, the ``db3 label`` command that soft-labels with the original teacher; else nothing."""
    if card.method != "db3kd":
        return ""
    qpt = card.labeler_config.get("queries_per_target")
    return (
        f"\nTo soft-label with the original teacher the same way: `db3 label --teacher {card.teacher} "
        f"--data {card.dataset}{_labeler_option(card)}" + (f" --queries-per-target {qpt}" if qpt else "")
        + " --out labels/`.\n"
    )


def _render_card(card: StudentCard, config: Mapping[str, Any], *, db3_import: bool) -> Any:
    """Builds the ``README.md`` :class:`huggingface_hub.ModelCard` from the card and timm's config.json."""
    from huggingface_hub import ModelCard

    arch = card.architecture
    repo = card.repo_id or PLACEHOLDER_REPO_ID
    title = card.model_name or f"{arch} distilled from {card.teacher}"
    data = _card_metadata(card, title)
    body = f"""# {title}

A `{arch}` student distilled with **{card.method.upper()}** from `{card.teacher}`, a teacher that answered
only top-1 class labels (no logits, no gradients): {card.queries:,} label queries in total.
Made with db3-timm {__version__}.

{_card_table(_card_rows(card, config))}

"""
    body += _usage_sections(card, repo, db3_import=db3_import) + _reproduce_text(card) + _limitations(card)
    if card.notes:
        body += f"\n## Notes\n\n{card.notes}\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _limitations(card: StudentCard) -> str:
    data = {"zsdb3kd": "pseudo samples grown from noise (no real image was used)",
            "synth-kd": "samples a generator network proposed (no real image was used)"}.get(
        card.method, f"images of `{card.dataset}` labelled by the teacher")
    return f"""
## Limitations

- The student imitates the teacher, not the ground truth: it learned from the teacher's answers on {data},
  so it inherits the teacher's mistakes and biases, and its accuracy is bounded by the teacher's.
- The teacher answered only top-1 labels. Soft labels, where used, are estimates from distances to its
  decision boundaries, not its probabilities.
- The accuracy above was measured on `{card.dataset}` ({card.eval_split} split); other data may differ.
- The student was not tested for robustness, calibration or fairness.
"""


def save_student(
    model: nn.Module,
    out_dir: Union[str, os.PathLike],
    *,
    card: Union[StudentCard, Mapping[str, Any]],
    data_config: Optional[Mapping[str, Any]] = None,
    label_names: Optional[Sequence[str]] = None,
) -> Path:
    """Writes a distilled timm student in timm's Hub format with a model card and ``db3.json``.

    Args:
        model: the student, a timm model (it has ``pretrained_cfg``).
        out_dir: folder to write (created; existing files of the same names are replaced).
        card: a :class:`StudentCard` or a dict of its fields; ``architecture`` defaults to the model's.
        data_config: preprocessing the student was trained with (``mean``, ``std``, ``input_size``,
            ``interpolation``, ``crop_pct``), recorded in config.json (default: the model's).
        label_names: the teacher's class names, one per output, written to config.json as timm's ``label_names``
            (a loaded student has them in ``pretrained_cfg["label_names"]``).

    Returns:
        The folder, absolute; it loads with ``timm.create_model('local-dir:' + str(path), pretrained=True)``.
    """
    import timm

    card = _as_card(card)
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(pretrained_cfg, Mapping) or "architecture" not in pretrained_cfg:
        raise TypeError(
            f"save_student needs a timm model (with pretrained_cfg['architecture']), got {type(model).__name__}"
        )
    arch = pretrained_cfg["architecture"]
    if card.architecture is None:
        card.architecture = arch
    elif card.architecture != arch:
        raise ValueError(f"card.architecture is {card.architecture!r} but the model is {arch!r}")
    out = Path(out_dir).expanduser().resolve()
    label_names = check_class_names(label_names, getattr(model, "num_classes", None))
    timm.models.save_for_hf(
        model, out, safe_serialization=True, data_config=None if data_config is None else dict(data_config),
        model_config=None if label_names is None else {"label_names": label_names},
    )
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    model_card = _render_card(card, config, db3_import=type(model).__module__.split(".")[0] == "db3_timm")
    model_card.save(out / CARD_NAME)
    pcfg = config.get("pretrained_cfg", {})
    write_json_atomic(
        out / DB3_CARD_NAME,
        {
            "format": _DB3_FORMAT,
            "format_version": _DB3_FORMAT_VERSION,
            "db3_timm_version": __version__,
            **card.to_dict(),
            "num_classes": config.get("num_classes"),
            "input_size": pcfg.get("input_size"),
            "mean": pcfg.get("mean"),
            "std": pcfg.get("std"),
        },
    )
    return out


def read_student_card(folder: Union[str, os.PathLike]) -> StudentCard:
    """Reads the :class:`StudentCard` back from a folder's ``db3.json``.

    Args:
        folder: a folder written by :func:`save_student`.

    Returns:
        The card (bookkeeping keys such as ``num_classes`` are dropped).
    """
    path = Path(folder).expanduser() / DB3_CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {folder!s} was not written by db3_timm.hub.save_student")
    data = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(StudentCard)}
    return StudentCard.from_dict({k: v for k, v in data.items() if k in known})


def _files_to_upload(folder: Path) -> List[str]:
    """Relative POSIX paths of the regular files under ``folder``, hidden files and folders excluded."""
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in rel.parts):
            files.append(rel.as_posix())
    return sorted(files)


def _fill_repo_id(folder: Path, repo_id: str) -> Dict[Path, bytes]:
    """Puts ``repo_id`` into a card saved before it was known (the usage snippet and ``db3.json``).

    Returns:
        The original bytes of each file rewritten, so :func:`_restore_files` can undo the change when
        the push fails (a failed push must not leave its repo id in the card for the next push).
    """
    meta_path = folder / DB3_CARD_NAME
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("repo_id") not in (None, repo_id):
        warnings.warn(
            f"{meta_path} names repo {meta['repo_id']!r} but the folder is pushed to {repo_id!r}; "
            f"its model card's usage snippet keeps {meta['repo_id']!r}",
            stacklevel=3,
        )
        return {}
    if meta.get("repo_id") is not None:
        return {}
    readme = folder / CARD_NAME
    originals = {readme: readme.read_bytes(), meta_path: meta_path.read_bytes()}
    text = originals[readme].decode("utf-8")
    readme.write_text(text.replace(f"hf-hub:{PLACEHOLDER_REPO_ID}", f"hf-hub:{repo_id}"), encoding="utf-8")
    meta["repo_id"] = repo_id
    write_json_atomic(meta_path, meta)
    return originals


def _restore_files(originals: Mapping[Path, bytes]) -> None:
    """Writes back the bytes :func:`_fill_repo_id` replaced."""
    for path, data in originals.items():
        path.write_bytes(data)


def _env_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return bool(constants.is_offline_mode()) or env in {"1", "ON", "YES", "TRUE"}


def _transport_errors() -> Tuple[type, ...]:
    """Exception types meaning "the Hub could not be reached" for the installed huggingface_hub."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types: List[type] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        for attr in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                types.append(cls)
    return tuple(types)


def _later_hint(folder: Path, repo_id: str, private: bool) -> str:
    cmd = f"db3 push {shlex.quote(str(folder))} --repo {repo_id}" + (" --private" if private else "")
    return (
        f"The student is saved locally at {folder} (load it now with timm.create_model("
        f"'local-dir:{folder}', pretrained=True)); push it later, where the Hub is reachable, with: {cmd}"
    )


def _one_line(err: BaseException, limit: int = 300) -> str:
    """``TYPE: message`` on one line (Hub errors span several), cut to about ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _http_error_detail(err: BaseException) -> str:
    """The first line of a Hub HTTP error and the server's own message, on one line."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    detail = " ".join(lines[0].split()).rstrip(":") if lines else type(err).__name__
    server = " ".join(str(getattr(err, "server_message", None) or "").split())
    if server and server not in detail:
        detail += f"; the Hub says: {server}"
    return detail if len(detail) <= 300 else detail[:297].rstrip() + "..."


_HTTP_STATUS_HINTS = {
    400: "the Hub rejected the request as malformed",
    404: "the repo or its namespace was not found, or the token cannot see it; check the ORG/NAME and the token",
}


def _push_error(err: BaseException, path: Path, repo_id: str, private: bool) -> Exception:
    """Maps what ``create_repo``/``upload_folder`` raised to one error the ``db3 push`` CLI reports in one line.

    401/403 become :class:`PermissionError`; every other HTTP status, an unreachable Hub, and an answer that
    cannot be read (e.g. a 200 whose body is not JSON) become :class:`HubUnavailableError`.
    """
    from huggingface_hub.errors import HfHubHTTPError

    later = _later_hint(path, repo_id, private)
    where = f"cannot push to the Hugging Face Hub repo {repo_id!r}"
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return PermissionError(
                f"the Hub refused to create or write {repo_id!r} (HTTP {status}): pass a token with write access "
                f"(token=..., the HF_TOKEN environment variable, `hf auth login`, or `db3 push --token-env VAR`). "
                + later
            )
        hint = _HTTP_STATUS_HINTS.get(status) or ("a server error, try again later" if (status or 0) >= 500
                                                  else "the push failed")
        answered = f"HTTP {status}" if status is not None else "an HTTP error"
        return HubUnavailableError(f"{where}: the Hub answered {answered}, {hint} ({_http_error_detail(err)}). {later}")
    if isinstance(err, _transport_errors()):
        return HubUnavailableError(
            f"{where}: the Hub is unreachable or offline mode is on ({_one_line(err)}). " + later
        )
    if isinstance(err, json.JSONDecodeError) or "JSONDecodeError" in type(err).__name__:
        return HubUnavailableError(f"{where}: the Hub's answer was not JSON, so it could not be read "
                                   f"(a proxy or an outage page?) ({_one_line(err)}). {later}")
    return HubUnavailableError(f"{where}: the Hub's answer could not be used ({_one_line(err)}). {later}")


def _check_push_folder(folder: Union[str, os.PathLike], repo_id: str) -> Path:
    """Validates ``repo_id`` and the folder's required files; returns the folder, absolute."""
    validate_repo_id(repo_id)
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"student folder not found: {str(folder)!r}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a saved student: missing {', '.join(missing)}; write it with db3_timm.hub.save_student"
        )
    return path


def _default_commit_message(path: Path) -> str:
    try:
        card = read_student_card(path)
        return f"Upload {card.architecture} distilled ({card.method}) from {card.teacher}"
    except (OSError, ValueError, TypeError):
        return "Upload db3 student"


def _upload(api: Any, path: Path, repo_id: str, *, token: Optional[str], private: bool, commit_message: str) -> str:
    """``create_repo`` then ``upload_folder``; what they raise is mapped by :func:`_push_error`."""
    from huggingface_hub.errors import HfHubHTTPError

    files = _files_to_upload(path)
    try:
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True, private=private, token=token)
        commit = api.upload_folder(
            folder_path=str(path),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            allow_patterns=[glob.escape(f) for f in files],
            token=token,
        )
    except (HfHubHTTPError, ValueError) + _transport_errors() as err:
        raise _push_error(err, path, repo_id, private) from err
    return str(commit if commit is not None else repo_url)


def push_student(
    folder: Union[str, os.PathLike],
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: bool = False,
    commit_message: Optional[str] = None,
    api: Optional["HfApi"] = None,
) -> str:
    """Uploads a :func:`save_student` folder to a Hub model repo (created if missing).

    Calls ``api.create_repo(repo_id=..., repo_type='model', exist_ok=True, private=...)`` then
    ``api.upload_folder(folder_path=..., repo_id=..., repo_type='model', allow_patterns=FILES, ...)``
    where ``FILES`` are the folder's files, hidden ones excluded. A card saved without a repo id
    gets this one filled into its usage snippet and ``db3.json`` first; if the push fails, the
    card is put back as it was, so a later push to another repo names that repo.

    Args:
        folder: folder written by :func:`save_student` (needs config.json, model.safetensors, README.md).
        repo_id: ``ORG/NAME`` of the model repo.
        token: Hub write token (default: ``HF_TOKEN`` or the stored login); never logged.
        private: create the repo private (ignored if it already exists).
        commit_message: commit message (default names the architecture and teacher).
        api: a ``huggingface_hub.HfApi`` (or an object with the same two methods); default ``HfApi(token=token)``.

    Returns:
        The commit URL (the repo URL if the Hub reports no commit).

    Raises:
        ValueError: ``repo_id`` is not ``ORG/NAME``.
        FileNotFoundError: ``folder`` is missing or lacks a required file.
        HubUnavailableError: offline mode is on, the Hub cannot be reached, answers an HTTP error other
            than 401/403 (e.g. 400, 404, 5xx) or an answer that cannot be read (e.g. not JSON); the
            one-line message gives the local path and the ``db3 push`` command to run later.
        PermissionError: the Hub refused the token (401/403).
    """
    from huggingface_hub import HfApi

    path = _check_push_folder(folder, repo_id)
    if api is None:
        api = HfApi(token=token)
    if isinstance(api, HfApi) and _env_offline():
        raise HubUnavailableError(
            f"cannot push to the Hugging Face Hub repo {repo_id!r}: offline mode is on (HF_HUB_OFFLINE). "
            + _later_hint(path, repo_id, private)
        )
    originals = _fill_repo_id(path, repo_id)
    if commit_message is None:
        commit_message = _default_commit_message(path)
    try:
        return _upload(api, path, repo_id, token=token, private=private, commit_message=commit_message)
    except BaseException:
        _restore_files(originals)
        raise
