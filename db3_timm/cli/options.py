"""Command-line options shared by ``db3`` and the recipes: one name per option, typed and checked in argparse,
turned into the library's checked dataclasses. Only this package and ``recipes/`` parse argv."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from ..generators.priors import NOISE_PRIORS

__all__ = [
    "Formatter", "int_at_least", "number", "json_object", "shape", "model_spec", "existing_file", "labeler_name", "out_dir",
    "CONFIG_SECTIONS", "load_config", "parse_with_config", "require", "add_teacher", "add_data", "add_labeling",
    "add_zero_shot", "add_training", "add_accelerate", "add_distill", "add_job", "labeling_config", "zero_shot_config", "train_config",
    "grows_without_images",
]


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default and keeps the description's line breaks."""


# ---------------------------------------------------------------------- types (stdlib only, so --help stays fast)
def int_at_least(minimum: int) -> Callable[[str], int]:
    """Returns an argparse ``type`` accepting integers ``>= minimum`` that names a bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def number(low: Optional[float] = None, *, low_open: bool = False, high: Optional[float] = None) -> Callable[[str], float]:
    """Returns an argparse ``type`` accepting finite numbers in a range (``nan`` and ``inf`` are refused)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
            or (high is not None and value > high)
        if bad:
            rng = f"{'>' if low_open else '>='} {low:g}" if low is not None else "finite"
            raise argparse.ArgumentTypeError(f"must be a finite number {rng}" + (f" and <= {high:g}" if high is not None else "")
                                             + f", got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def port(text: str) -> int:
    """Returns a TCP port number (0: any free port)."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [0, 65535], got {text!r}")
    return value


def json_object(text: str) -> Dict[str, Any]:
    """Returns the JSON object ``text`` (a component's extra keyword arguments); names the bad value otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"momentum\": 0.5}}', got {text!r}")
    return value


def shape(text: str) -> Tuple[int, int, int]:
    """Returns ``C,H,W`` as three positive ints."""
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive integers (e.g. 1,28,28), got {text!r}")
    return dims  # type: ignore[return-value]


def model_spec(role: str) -> Callable[[str], str]:
    """Returns an argparse type accepting a registered timm name, ``local-dir:PATH`` or ``hf-hub:ID`` for ``role``."""

    def parse(text: str) -> str:
        if text.startswith("local-dir:"):
            folder = Path(text.split(":", 1)[1]).expanduser()
            if not folder.is_dir():
                raise argparse.ArgumentTypeError(f"{role} folder not found: {str(folder)!r} (from {text!r})")
            return f"local-dir:{folder}"
        if ":" not in text:
            import timm

            from .. import models as _models  # noqa: F401  (the paper's architectures)

            if not timm.is_model(text):
                raise argparse.ArgumentTypeError(f"unknown timm model {text!r}; pass a registered name, "
                                                 f"local-dir:PATH or hf-hub:ORG/NAME")
        return text

    parse.__name__ = f"{role} model"
    return parse


def existing_file(text: str) -> str:
    """Returns the path of an existing file."""
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text!r}")
    return str(Path(text).expanduser())


def out_dir(text: str) -> str:
    """Returns a folder path that is, or can become, a writable folder (checked before any query)."""
    import os

    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {str(probe)!r} (to create {text!r}): no permission")
    return str(path)


def labeler_name(text: str) -> str:
    """Returns a registered labeler name."""
    from .._registry import is_labeler, list_labelers

    if not is_labeler(text):
        raise argparse.ArgumentTypeError(f"unknown labeler {text!r}; known labelers: {', '.join(list_labelers())}")
    return text


# ---------------------------------------------------------------------- config files
#: Config-file sections, one per recipe / command; top-level keys apply to every one.
CONFIG_SECTIONS = ("train_teacher", "distill")


def load_config(path: str, section: Optional[str] = None) -> Dict[str, Any]:
    """Returns a YAML config's top-level keys updated with those of ``section`` (dashes or underscores alike)."""
    import yaml

    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path!r}")
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path!r}: a config must be a mapping of option -> value, got {type(raw).__name__}")
    flat = {str(k).replace("-", "_"): v for k, v in raw.items() if k not in CONFIG_SECTIONS}
    own = raw.get(section) or {} if section else {}
    if not isinstance(own, dict):
        raise ValueError(f"{path!r}: section {section!r} must be a mapping, got {type(own).__name__}")
    flat.update({str(k).replace("-", "_"): v for k, v in own.items()})
    return flat


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, *,
                      section: Optional[str] = None) -> argparse.Namespace:
    """Parses ``argv`` with ``--config FILE`` values as defaults (flags on the command line win); unknown keys
    in the file are an argparse error that names them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = load_config(known.config, section)
        except (OSError, ValueError) as err:
            parser.error(f"argument --config: {err}")
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
        # A key may also be any long spelling of an option (output_dir for --output-dir / --out).
        aliases = {o.lstrip("-").replace("-", "_"): a.dest for a in actions.values() for o in a.option_strings}
        values = {aliases.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            parser.error(f"argument --config: {known.config!r} has unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(actions))})")
        # String defaults go through the option's type when the flag is not given, like command-line text.
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """argparse error unless every option in ``names`` got a value (on the command line or in ``--config``)."""
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        parser.error(f"the following arguments are required (on the command line or in --config): {flags}")


# ---------------------------------------------------------------------- option groups
def add_teacher(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--teacher``, ``--teacher-checkpoint``, ``--num-classes``, ``--budget``, ``--device``."""
    g = p.add_argument_group("teacher (label-only)")
    g.add_argument("--teacher", required=required, type=model_spec("teacher"), metavar="MODEL",
                   help="timm model name, local-dir:PATH (a timm save_for_hf folder) or hf-hub:ORG/NAME")
    g.add_argument("--teacher-checkpoint", "--checkpoint", dest="teacher_checkpoint", type=existing_file,
                   metavar="FILE", help="teacher weights (.safetensors/.pt) for a timm name")
    g.add_argument("--num-classes", type=int_at_least(2), metavar="N", help="teacher classifier size (default: the model's)")
    g.add_argument("--budget", type=int_at_least(0), metavar="Q", help="cap on the teacher queries of the job")
    g.add_argument("--device", help="teacher device (default: cuda if available, else cpu)")
    g.add_argument("--quantize", choices=["uint8"], default=None,
                   help="send every query on the 8-bit grid, as an image API receives it (stored as 8-bit images)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="teacher inference precision (bf16/fp16: faster on GPU; answers near a boundary may differ)")
    g.add_argument("--channels-last", action="store_true", help="run the teacher in channels-last memory format")


def add_data(p: argparse.ArgumentParser, *, splits: bool = True) -> None:
    """``--data`` and its split / size options."""
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SPEC", help="digits, fashion-mnist, idx:PATH, hf:NAME_OR_PATH, torchvision:NAME:ROOT")
    g.add_argument("--image-size", type=int_at_least(1), metavar="N", help="resize images to NxN (default: the teacher's)")
    g.add_argument("--limit", type=int_at_least(1), metavar="N", help="use only the first N training images")
    g.add_argument("--train-split", "--split", dest="train_split", default="train", metavar="NAME")
    if splits:
        g.add_argument("--test-split", default="test", metavar="NAME", help="split the student is scored on")
        g.add_argument("--test-limit", type=int_at_least(1), metavar="N", help="use only the first N test images")
        g.add_argument("--val-fraction", type=number(0, high=0.99), default=None, metavar="F",
                       help="share of the training images held out to pick the best epoch (0: keep the last; "
                            "default: 0.1, zero-shot distillation: 0, every answer trains)")


def add_labeling(p: argparse.ArgumentParser, *, transfer_dir: bool = False) -> None:
    """How images are soft-labelled (``transfer_dir``: or take an existing transfer set)."""
    g = p.add_argument_group("soft labels (DB3)")
    if transfer_dir:
        g.add_argument("--transfer-dir", metavar="DIR", help="train on this finished transfer set (a db3 label / "
                                                             "generate / distill output) instead of labelling --data")
    g.add_argument("--labeler", default="mbd", type=labeler_name, help="registered labeler (see `db3 list labelers`)")
    g.add_argument("--queries-per-target", type=int_at_least(1), metavar="Q",
                   help="query budget per (image, other class) for labelers that search boundaries (default: the labeler's)")
    g.add_argument("--targets", type=targets_arg, metavar="K",
                   help="classes searched per image: 'all' (the labeler's default), a number k (the k each image most "
                        "likely borders: one image costs at most 1 + k*Q queries), or 'auto'")
    g.add_argument("--labeler-kwargs", type=json_object, default={}, metavar="JSON",
                   help="more labeler options, e.g. '{\"momentum\": 0.5, \"probes\": 40}'")
    g.add_argument("--references-per-class", type=int_at_least(0), default=10, metavar="K",
                   help="images per class the labeler uses as references (teacher-checked once)")
    g.add_argument("--prior", type=model_spec("prior"), metavar="MODEL",
                   help="white-box surrogate guiding mbd's boundary search (e.g. a student trained on the teacher's labels)")
    g.add_argument("--prior-checkpoint", type=existing_file, metavar="FILE", help="surrogate weights")
    g.add_argument("--shard-size", type=int_at_least(1), default=None, metavar="N",
                   help="rows per shard (unit of resumption; default: 512 for small images, fewer for big ones, "
                        "e.g. 55 at 3x224x224)")


def add_zero_shot(p: argparse.ArgumentParser, *, flag: bool = True) -> None:
    """How zero-shot samples are made (``--zero-shot`` switches them on where images are the default)."""
    from ..generators.synth import SynthConfig
    from ..transfer.plan import NOISE_FROM, NOISE_SHARE

    s = p.add_argument_group(f"zero-shot samples (without images the default is synth under {NOISE_FROM:,} queries, "
                             f"stretched noise from {NOISE_FROM:,} on)")
    if flag:
        s.add_argument("--zero-shot", action="store_true",
                       help=f"use no training image: plan default becomes synth (under {NOISE_FROM:,} queries) "
                            "or noise, plan paper becomes zsdb3")
    s.add_argument("--queries-per-round", type=int_at_least(1), default=None, metavar="Q",
                   help="synth: generated samples the teacher labels per round "
                        f"(default: {SynthConfig.queries_per_round})")
    s.add_argument("--mix-share", type=number(0, high=0.9), default=0.0, metavar="F",
                   help="synth: share of the budget spent on teacher-labelled mixes of the generated samples")
    s.add_argument("--noise-share", type=number(0, high=1), default=None, metavar="F",
                   help=f"synth: share of the rounds that are smooth noise first (default: {NOISE_SHARE})")
    s.add_argument("--noise-prior", choices=sorted(NOISE_PRIORS), default=None,
                   help="zero-shot noise: smooth blobs, or with tall and wide shapes too (default: stretched for plan "
                        "noise, smooth for synth's noise rounds)")
    s.add_argument("--offspring-share", type=number(0, high=0.9), default=0.0, metavar="F",
                   help="plan noise: share of the budget spent on teacher-labelled children of same-label noise samples")
    s.add_argument("--synth-kwargs", type=json_object, default={}, metavar="JSON",
                   help="more synth options (student, width, generator_steps, student_steps, augment, targets, reinit, ...)")
    g = p.add_argument_group("zero-shot pseudo samples grown from noise (zsdb3, the paper's ZSDB3KD)")
    g.add_argument("--samples-per-class", type=int_at_least(1), default=100, metavar="N")
    g.add_argument("--iterations", type=int_at_least(0), default=10, metavar="K", help="push-away iterations")
    g.add_argument("--queries-per-iteration", type=int_at_least(20), default=500, metavar="Q",
                   help="per-sample query budget of one iteration")
    g.add_argument("--step", type=number(0, low_open=True), default=0.5, help="initial L2 length of a push-away move")
    g.add_argument("--step-growth", type=number(1), default=1.0, metavar="F",
                   help="a sample's step is multiplied by F after a kept move (1: fixed, as the reference)")
    g.add_argument("--start", choices=sorted(["reference", *NOISE_PRIORS]), default="smooth",
                   help="start noise: low-frequency noise (stretched: tall and wide shapes too), or the paper's per-pixel noise")
    g.add_argument("--start-pool", type=int_at_least(0), default=0, metavar="N",
                   help="keep N teacher-labelled start-search images in the transfer set")
    g.add_argument("--mixes", type=int_at_least(0), default=0, metavar="N",
                   help="add N teacher-labelled mixes of two pseudo-sample/pool images (one query each)")
    g.add_argument("--max-init-queries", type=int_at_least(1), default=200_000, metavar="Q",
                   help="cap on the start search; classes the teacher never answers are reported")
    g.add_argument("--generator-kwargs", type=json_object, default={}, metavar="JSON", help="more generator options")


def add_training(p: argparse.ArgumentParser) -> None:
    """The student's optimisation (:class:`~db3_timm.training.TrainConfig`)."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int_at_least(1), default=None, help="(default: 10; zero-shot distillation: 60)")
    g.add_argument("--max-samples", type=int_at_least(1), default=None, metavar="N",
                   help="cap on the samples seen: a big transfer set trains fewer epochs, at least one "
                        "(default: none; zero-shot distillation: 1,500,000)")
    g.add_argument("--batch-size", type=int_at_least(1), default=128,
                   help="global batch, split across processes (1 and N processes train on the same batches)")
    g.add_argument("--eval-batch-size", type=int_at_least(1), default=512)
    g.add_argument("--opt", default="adam", help="timm optimizer name (adam, adamw, momentum, sgd, ...)")
    g.add_argument("--lr", type=number(0, low_open=True), default=None, help="(default: 1e-3; zero-shot distillation: 2e-3)")
    g.add_argument("--momentum", type=number(0), default=0.9)
    g.add_argument("--weight-decay", type=number(0), default=0.0)
    g.add_argument("--sched", choices=["cosine", "step", "none"], default="cosine", help="learning-rate schedule")
    g.add_argument("--milestones", type=int, nargs="+", default=[], metavar="EPOCH", help="--sched step: decay epochs")
    g.add_argument("--gamma", type=float, nargs="+", default=[0.1], help="--sched step: one factor, or one per milestone")
    g.add_argument("--seed", type=int_at_least(0), default=0)
    g.add_argument("--temperature", type=number(0, low_open=True), default=20.0, help="KD temperature T (DB3KD: 20)")
    g.add_argument("--ce-weight", type=number(0), default=1.0, help="weight of CE on the teacher's labels")
    g.add_argument("--kd-weight", type=number(0), default=1.0, help="weight of the T^2-scaled KL to the soft labels")
    g.add_argument("--min-steps-per-epoch", type=int_at_least(0), default=8,
                   help="a smaller transfer set trains with a smaller batch (0: never adapt)")
    g.add_argument("--checkpoint-every", type=int_at_least(0), default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (0: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int_at_least(0), default=2, metavar="K", help="keep the newest K (0: all)")
    g.add_argument("--num-workers", type=int_at_least(0), default=0, help="DataLoader worker processes")


def add_accelerate(p: argparse.ArgumentParser) -> None:
    """Accelerate settings; left unset, ``accelerate launch`` / ``accelerate config`` decide."""
    g = p.add_argument_group("accelerate")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16", "fp8"], default=None,
                   help="(default: the launcher's setting)")
    g.add_argument("--gradient-accumulation-steps", type=int_at_least(1), default=None,
                   help="(default: the launcher's setting, else 1)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_distill(p: argparse.ArgumentParser) -> None:
    """Every option of ``db3 distill`` and ``recipes/distill.py`` (the same names in both)."""
    p.add_argument("--config", metavar="FILE", help="YAML config (recipes/configs/*.yaml, section 'distill'); flags win")
    add_teacher(p, required=False)
    p.add_argument("--student", metavar="MODEL", help="timm student architecture, e.g. lenet5_half, resnet18")
    p.add_argument("--student-pretrained", action="store_true", help="start from the student's pretrained weights")
    p.add_argument("--eval-teacher", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the teacher on the test split (one counted query per test image)")
    from ..transfer.plan import NOISE_FROM, PLANS

    p.add_argument("--plan", default="default", choices=list(PLANS),
                   help="how the budget is spent: default (the best student per query measured), paper (DB3KD soft "
                        "labels from --labeler), db3 (the same, every probe answer trained on too), hard (labels only), "
                        f"mixes; without images: synth, noise (stretched noise; the default from {NOISE_FROM:,} "
                        "queries, synth under), zsdb3 (the paper's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimated time, then stop")
    p.add_argument("--out", "--output-dir", dest="out", type=out_dir, metavar="DIR",
                   help="output folder (model/ is the student)")
    add_data(p)
    add_labeling(p, transfer_dir=True)
    add_zero_shot(p)
    add_training(p)
    add_accelerate(p)


def add_job(p: argparse.ArgumentParser) -> None:
    """``--seed``, ``--no-progress`` and the required ``--out`` of a job that writes one folder."""
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", "--output-dir", dest="out", required=True, type=out_dir, metavar="DIR", help="output folder")


# ---------------------------------------------------------------------- to the library's dataclasses
def targets_arg(text: str) -> Union[str, int]:
    """``--targets``: 'all', 'auto' or a whole number (checked against the teacher's classes later)."""
    if text in ("all", "auto"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all', 'auto' or a number of classes, got {text!r}") from None


def labeling_config(args: argparse.Namespace) -> Any:
    """Returns the :class:`~db3_timm.transfer.build.LabelingConfig` of the parsed options."""
    from ..transfer.build import LabelingConfig

    options = dict(args.labeler_kwargs or {})
    if args.queries_per_target is not None:  # only when asked: a labeler refuses options it does not take
        options["queries_per_target"] = args.queries_per_target
    if getattr(args, "targets", None) is not None:
        options["targets"] = args.targets
    return LabelingConfig(labeler=args.labeler, options=options, references_per_class=args.references_per_class,
                          shard_size=args.shard_size)


def zero_shot_config(args: argparse.Namespace) -> Any:
    """Returns the :class:`~db3_timm.transfer.build.ZeroShotConfig` of the parsed options."""
    from ..transfer.build import ZeroShotConfig

    options = {"start": args.start, "start_pool": args.start_pool, "mixes": args.mixes,
               "max_init_queries": args.max_init_queries, **(args.generator_kwargs or {})}
    # Only options given land in ``synth``: any of them keeps the generator as the default plan at every budget.
    per_round = {} if args.queries_per_round is None else {"queries_per_round": args.queries_per_round}
    synth = {**per_round, **(args.synth_kwargs or {})}
    return ZeroShotConfig(samples_per_class=args.samples_per_class, iterations=args.iterations,
                          queries_per_iteration=args.queries_per_iteration, step=args.step, step_growth=args.step_growth,
                          options=options, synth=synth, mix_share=args.mix_share,
                          noise_share=args.noise_share, offspring_share=args.offspring_share,
                          noise_prior=args.noise_prior)


def grows_without_images(args: argparse.Namespace) -> bool:
    """Whether a ``distill`` run's transfer set has no real image: ``--zero-shot``, or a ``--transfer-dir`` grown by a
    zero-shot plan (one that cannot be opened counts as not; the run reports why when it opens it)."""
    if args.zero_shot:
        return True
    if not args.transfer_dir:
        return False
    from ..transfer.build import load_transfer_set

    try:
        return load_transfer_set(args.transfer_dir).zero_shot
    except (OSError, ValueError):
        return False


def train_config(args: argparse.Namespace, zero_shot: bool = False) -> Any:
    """Returns the :class:`~db3_timm.training.TrainConfig` of the parsed options; those left unset (``None``) keep
    :func:`~db3_timm.pipeline.default_train`'s value for a transfer set grown without images (``zero_shot``) or not."""
    from dataclasses import fields, replace

    from ..pipeline import default_train

    base = default_train(zero_shot)
    return replace(base, **{f.name: getattr(args, f.name) for f in fields(base) if getattr(args, f.name) is not None})
