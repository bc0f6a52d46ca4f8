"""The reusable half of the Accelerate recipes (``recipes/``): config files, the launch guard, data,
the training loop with checkpoint/resume, evaluation and the results report.

The recipes stay short scripts: they build a model, a :class:`~timm.task.TrainingTask` and the data,
then hand them to :func:`train_and_evaluate`. Everything here follows Accelerate's idioms:

* one :class:`accelerate.Accelerator` (:func:`make_accelerator`) with ``split_batches=True`` -- the
  ``--batch-size`` is the *global* batch, so 1 process and N processes train on the same batches --
  and a seedable sampler, so the shuffle order is a function of ``(seed, epoch)`` alone;
* ``accelerator.prepare`` for the task, optimizer, scheduler and loaders, ``accelerator.accumulate``
  for ``--gradient-accumulation-steps``, ``accelerator.autocast`` / ``--mixed-precision``;
* ``gather_for_metrics`` in evaluation (the padding of the last batch is dropped);
* ``save_state`` at every epoch end (and every ``--checkpoint-every`` optimizer steps), ``load_state``
  with ``--resume``, mid-epoch resumption with ``skip_first_batches``; a resumed run finishes with
  the same weights as one that was never interrupted;
* one tqdm bar, on the main process; optional ``--log-with`` trackers.

Checkpoints live in ``OUTPUT_DIR/checkpoints/{epoch_E,step_S}/``; a folder counts once its
``progress.json`` is written (after every process has saved), so a run killed mid-save resumes from
the previous one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._argtypes import json_object
from .labeling import DistributedSetupError

__all__ = [
    "CONFIG_SECTIONS",
    "load_config",
    "parse_args_with_config",
    "add_data_args",
    "add_training_args",
    "require_args",
    "make_accelerator",
    "check_distributed_setup",
    "DistributedSetupError",
    "TensorDictDataset",
    "holdout_split",
    "references_per_class",
    "check_model_input",
    "input_transform_for",
    "batch_target",
    "build_optimizer",
    "build_scheduler",
    "TrainProgress",
    "train_loop",
    "evaluate_accuracy",
    "find_checkpoint",
    "save_model",
    "state_checksum",
    "train_and_evaluate",
    "add_transfer_args",
    "TransferSet",
    "prepare_transfer_set",
]

PathLike = Union[str, os.PathLike]

#: Config-file sections, one per recipe; top-level keys apply to every recipe.
CONFIG_SECTIONS = ("train_teacher", "distill")

CHECKPOINTS_DIR = "checkpoints"
PROGRESS_NAME = "progress.json"
RESULTS_NAME = "results.json"


# ---------------------------------------------------------------------- config files
def load_config(path: PathLike, section: Optional[str] = None) -> Dict[str, Any]:
    """Reads a recipe config (YAML): the top-level keys, updated with those of ``section``.

    Keys may use dashes or underscores (``batch-size`` == ``batch_size``). Sections of other
    recipes (:data:`CONFIG_SECTIONS`) are dropped.

    Args:
        path: the ``.yaml`` file.
        section: this recipe's section name, e.g. ``"distill"``.

    Returns:
        A flat dict of argparse destinations -> values.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{str(path)!r}: a config must be a mapping of option -> value, got {type(raw).__name__}")
    flat: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in CONFIG_SECTIONS:
            continue
        flat[str(key).replace("-", "_")] = value
    if section is not None:
        own = raw.get(section) or {}
        if not isinstance(own, dict):
            raise ValueError(f"{str(path)!r}: section {section!r} must be a mapping, got {type(own).__name__}")
        flat.update({str(k).replace("-", "_"): v for k, v in own.items()})
    return flat


def parse_args_with_config(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, *, section: Optional[str] = None
) -> argparse.Namespace:
    """Parses ``argv`` with ``--config FILE`` values as defaults: flags on the command line win.

    Unknown keys in the file are an argparse error that names them (typos do not pass silently).
    String values go through the option's ``type`` like command-line text does.

    Args:
        parser: the recipe's parser (must define ``--config``).
        argv: arguments (default ``sys.argv[1:]``).
        section: the recipe's config section (see :func:`load_config`).

    Returns:
        The parsed namespace.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = load_config(known.config, section)
        except (OSError, ValueError) as err:
            parser.error(f"argument --config: {err}")
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            parser.error(
                f"argument --config: {known.config!r} has unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(actions))})"
            )
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def require_args(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """argparse error unless every option in ``names`` got a value (on the command line or in ``--config``)."""
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        parser.error(f"the following arguments are required (on the command line or in --config): {flags}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Adds the data options shared by the recipes (``--data``, ``--image-size``, splits, limits)."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="SPEC",
                   help="dataset spec for db3_timm.data.load_image_dataset: digits, fashion-mnist, idx:PATH, "
                        "hf:NAME_OR_PATH, torchvision:NAME:ROOT")
    g.add_argument("--image-size", type=_positive_int, metavar="N", help="resize images to NxN")
    g.add_argument("--train-split", default="train", metavar="NAME")
    g.add_argument("--test-split", default="test", metavar="NAME", help="the real test split (final report)")
    g.add_argument("--val-split", metavar="NAME",
                   help="a held-out validation split of --data (default: hold out --val-fraction of the train split)")
    g.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F",
                   help="fraction of the train split held out for validation / best-epoch selection (0: none)")
    g.add_argument("--limit", type=_positive_int, metavar="N", help="use only the first N training images")
    g.add_argument("--test-limit", type=_positive_int, metavar="N", help="use only the first N test images")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Adds the optimisation, Accelerate and checkpointing options shared by the recipes."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (recipes/configs/*.yaml); flags override it")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=10)
    g.add_argument("--batch-size", type=_positive_int, default=128,
                   help="global batch size, split across processes, so any process count trains on the same batches "
                        "(the last incomplete batch of an epoch is dropped)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=512)
    g.add_argument("--opt", default="adam", help="timm optimizer name (adam, adamw, momentum, sgd = nesterov, ...)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--sched", choices=["cosine", "step", "none"], default="cosine",
                   help="learning-rate schedule over optimizer steps")
    g.add_argument("--milestones", type=int, nargs="+", default=[], metavar="EPOCH",
                   help="--sched step: epochs at which the learning rate is multiplied by --gamma")
    g.add_argument("--gamma", type=float, nargs="+", default=[0.1],
                   help="--sched step: one factor for every milestone, or one factor per milestone")
    g.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("accelerate")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16", "fp8"], default="no")
    g.add_argument("--gradient-accumulation-steps", type=_positive_int, default=1)
    g.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--log-with", nargs="*", default=None, metavar="TRACKER",
                   help="accelerate trackers (tensorboard, wandb, ..., or 'all'); logs go to OUTPUT_DIR/logs")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--output-dir", metavar="DIR", help="where models, checkpoints and results.json go")
    g.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="resume from a checkpoint folder, or (no value) from the latest one in OUTPUT_DIR/checkpoints "
                        "(starts fresh when there is none, so the same command restarts a preempted job)")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also save a mid-epoch checkpoint every STEPS optimizer steps (0: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int, default=2, metavar="K",
                   help="keep the newest K checkpoints (0: keep all)")


# ---------------------------------------------------------------------- accelerate
def check_distributed_setup(accelerator: Any) -> None:
    """Refuses a launch where ``WORLD_SIZE > 1`` but accelerate set up a single process.

    That happens on CPU-only machines launched with ``torchrun``/``accelerate launch --multi_gpu`` without
    ``ACCELERATE_USE_CPU``: every process would train alone on all the data, and they would overwrite each
    other's checkpoints.

    Raises:
        DistributedSetupError: with the command that fixes it.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and int(accelerator.num_processes) == 1:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but accelerate set up a single process (distributed type "
            f"{getattr(accelerator, 'distributed_type', '?')}), so every process would train alone on all the data. "
            f"On CPU-only machines launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
            f"--num_processes {world_size} ...` (or pass --cpu)."
        )


def make_accelerator(args: argparse.Namespace) -> Any:
    """Builds the run's :class:`accelerate.Accelerator` from the recipe options, checks the launch, seeds everything.

    Global batches are split across processes (``split_batches=True``) and shuffled by a seedable sampler
    (``data_seed=args.seed``), so the batches depend on the seed and the epoch only.

    Raises:
        DistributedSetupError: see :func:`check_distributed_setup`.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration, set_seed

    out = Path(args.output_dir)
    log_with = args.log_with
    if log_with is not None and len(log_with) == 0:
        log_with = ["all"]
    accelerator = Accelerator(
        cpu=bool(getattr(args, "cpu", False)),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=args.seed),
    )
    check_distributed_setup(accelerator)
    set_seed(args.seed)
    return accelerator


# ---------------------------------------------------------------------- data
class TensorDictDataset(torch.utils.data.Dataset):
    """In-memory rows ``{"image": (C, H, W), "label": (), ["soft_logits": (K,)]}`` over tensors of equal length."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, soft_logits: Optional[torch.Tensor] = None):
        if images.shape[0] != labels.shape[0] or (soft_logits is not None and soft_logits.shape[0] != labels.shape[0]):
            raise ValueError("images, labels and soft_logits must have the same length")
        self.tensors = {"image": images, "label": labels.long()}
        if soft_logits is not None:
            self.tensors["soft_logits"] = soft_logits

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: List[int]) -> List[Dict[str, torch.Tensor]]:
        # Batched fetch (torch's DataLoader uses it when present): one gather per column.
        index = torch.as_tensor(idx, dtype=torch.long)
        cols = {k: v[index] for k, v in self.tensors.items()}
        return [{k: v[j] for k, v in cols.items()} for j in range(len(idx))]


def holdout_split(n: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into ``(train, held_out)`` indices, each in ascending order.

    ``round(fraction * n)`` indices are held out (at least one when ``fraction > 0``, and never all).
    """
    n_val = 0 if fraction <= 0 else min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def references_per_class(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Indices of the first ``k`` samples of every class, in dataset order (the labelers' reference images)."""
    picked = [torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def check_model_input(model: nn.Module, image_shape: Sequence[int], num_classes: Optional[int] = None,
                      what: str = "model") -> None:
    """Raises ``ValueError`` when ``(C, H, W)`` images or ``num_classes`` do not fit ``model``.

    Channels and class counts must match; the height/width must match only for models whose timm
    config declares ``fixed_input_size`` (other sizes are resized by :func:`input_transform_for` anyway).
    """
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    c = int(image_shape[0])
    in_chans = int(cfg["input_size"][0])
    if c != in_chans:
        raise ValueError(f"{what} {type(model).__name__} takes {in_chans}-channel input but the images have {c} channel(s)")
    model_classes = getattr(model, "num_classes", None)
    if num_classes is not None and model_classes is not None and int(model_classes) != int(num_classes):
        raise ValueError(f"{what} {type(model).__name__} has {model_classes} outputs but the data has {num_classes} classes")


def input_transform_for(model: nn.Module, image_shape: Optional[Sequence[int]] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixel-space ``[0, 1]`` batch -> model input: resize (when a fixed-size model needs it) then normalise."""
    import torch.nn.functional as F
    from timm.data import resolve_model_data_config

    from .distill import normalizer_for

    cfg = resolve_model_data_config(model)
    norm = normalizer_for(model)
    target = tuple(int(s) for s in cfg["input_size"][1:])
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    if image_shape is not None and fixed and tuple(int(s) for s in image_shape[1:]) != target:
        return lambda x: norm(F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True))
    return norm


def batch_target(batch: Mapping[str, torch.Tensor]) -> Any:
    """The task target of a batch: ``(labels, soft_logits)`` when the batch carries soft logits, else the labels."""
    if "soft_logits" in batch:
        return batch["label"], batch["soft_logits"]
    return batch["label"]


def _loader(dataset: Any, batch_size: int, *, shuffle: bool, num_workers: int) -> torch.utils.data.DataLoader:
    # Training drops the last incomplete batch (as timm's train.py does): accelerate would otherwise pad it with
    # repeated samples on some processes, and 1 and N processes would no longer train on the same batches.
    drop_last = shuffle and len(dataset) >= batch_size
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       drop_last=drop_last)


# ---------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` with the recipe's ``--opt/--lr/--momentum/--weight-decay``."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int) -> Any:
    """A ``LambdaLR`` over optimizer steps: cosine to 0, step decay at ``--milestones`` (epochs), or constant."""
    total = max(1, args.epochs * steps_per_epoch)
    if args.sched == "cosine":
        fn = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif args.sched == "step":
        milestones = sorted(int(m) for m in args.milestones)
        gammas = [float(g) for g in args.gamma]
        if len(gammas) == 1:
            gammas = gammas * len(milestones)
        if len(gammas) != len(milestones):
            raise ValueError(f"--gamma needs one value or one per milestone ({len(milestones)}), got {len(gammas)}")

        def fn(step: int) -> float:
            epoch = step // steps_per_epoch
            factor = 1.0
            for m, g in zip(milestones, gammas):
                if epoch >= m:
                    factor *= g
            return factor
    else:
        fn = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainProgress:
    """Where a run stands; registered with ``accelerator.register_for_checkpointing`` so it resumes too.

    Attributes:
        epoch: the epoch in progress (0-based; ``epochs`` once finished).
        batch_in_epoch: batches of ``epoch`` already trained (mid-epoch resumption skips them).
        global_step: optimizer steps so far.
        loss_sum / loss_count: the current epoch's summed batch losses (all processes) and their count.
        best_metric / best_epoch: the best validation accuracy so far and its epoch (1-based).
        history: one record per finished epoch (``epoch``, ``train_loss``, ``val_acc``, ``lr``, ``global_step``).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _checkpoint_key(folder: Path) -> Optional[Tuple[int, int, int]]:
    path = folder / PROGRESS_NAME
    if not path.is_file():
        return None
    try:
        p = json.loads(path.read_text())
        return int(p["global_step"]), int(p["epoch"]), int(p["batch_in_epoch"])
    except (ValueError, KeyError):
        return None


def find_checkpoint(resume: str, checkpoint_dir: PathLike) -> Optional[Path]:
    """Resolves ``--resume``: ``"latest"`` -> the newest complete checkpoint under ``checkpoint_dir`` (or ``None``),
    else the named folder (which must be a complete checkpoint)."""
    if resume == "latest":
        root = Path(checkpoint_dir)
        found = [(k, d) for d in root.glob("*") if d.is_dir() and (k := _checkpoint_key(d)) is not None] if root.is_dir() else []
        return max(found)[1] if found else None
    folder = Path(resume)
    if _checkpoint_key(folder) is None:
        raise FileNotFoundError(f"--resume {resume!r}: not a complete checkpoint folder (no {PROGRESS_NAME})")
    return folder


def _save_checkpoint(accelerator: Any, progress: TrainProgress, folder: Path, keep: int) -> None:
    accelerator.save_state(output_dir=str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        summary = {k: getattr(progress, k) for k in ("epoch", "batch_in_epoch", "global_step", "best_metric", "best_epoch")}
        tmp = folder / f".{PROGRESS_NAME}.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, folder / PROGRESS_NAME)  # written last: marks the checkpoint complete
        if keep > 0:
            done = sorted((k, d) for d in folder.parent.glob("*") if d.is_dir() and (k := _checkpoint_key(d)) is not None)
            for _, old in done[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate_accuracy(accelerator: Any, model: nn.Module, loader: Iterable, input_transform: Callable) -> float:
    """Top-1 accuracy of ``model`` over a prepared ``loader`` of ``{"image", "label"}`` batches, all processes
    together (``gather_for_metrics`` drops the samples duplicated to even out the last batch)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        with accelerator.autocast():
            logits = model(input_transform(batch["image"]))
        pred, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["label"]))
        correct += int((pred == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct / max(total, 1)


def train_loop(
    accelerator: Any,
    task: nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_loader: Any,
    *,
    epochs: int,
    input_transform: Callable[[torch.Tensor], torch.Tensor],
    checkpoint_dir: PathLike,
    evaluate: Optional[Callable[[], float]] = None,
    on_best: Optional[Callable[[TrainProgress], None]] = None,
    resume: Optional[str] = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    progress_bar: bool = True,
) -> TrainProgress:
    """Trains a prepared :class:`~timm.task.TrainingTask` for ``epochs`` epochs with checkpoints and resumption.

    Each batch ``{"image", "label"[, "soft_logits"]}`` becomes ``task(input_transform(image), batch_target(batch))``
    and its ``"loss"`` is back-propagated under ``accelerator.accumulate``. After every epoch, ``evaluate()``
    (validation accuracy) runs, ``on_best`` is called on a new best, and ``save_state`` writes
    ``checkpoint_dir/epoch_E``; with ``checkpoint_every``, ``checkpoint_dir/step_S`` is written every that many
    optimizer steps too. ``resume`` (a folder or ``"latest"``) restores all of it, skipping the batches of the
    interrupted epoch that were already trained.

    Returns:
        The :class:`TrainProgress` (history, best epoch, step count).
    """
    from tqdm.auto import tqdm

    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    checkpoint_dir = Path(checkpoint_dir)
    if not resume and find_checkpoint("latest", checkpoint_dir) is not None:
        accelerator.print(f"note: {checkpoint_dir} holds checkpoints of an earlier run; starting from scratch "
                          f"(pass --resume to continue it)")
    if resume:
        folder = find_checkpoint(resume, checkpoint_dir)
        if folder is None:
            accelerator.print(f"--resume: no checkpoint in {checkpoint_dir} yet; starting from scratch")
        else:
            accelerator.load_state(str(folder))
            accelerator.print(f"resumed from {folder} (epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, "
                              f"step {progress.global_step})")
    steps_per_epoch = len(train_loader)
    bar = tqdm(total=epochs * steps_per_epoch, initial=progress.epoch * steps_per_epoch + progress.batch_in_epoch,
               desc="train", unit="batch", dynamic_ncols=True,
               disable=not (progress_bar and accelerator.is_main_process))
    local_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    local_count = 0

    def flush() -> None:
        # Summed over processes at checkpoints and epoch ends only (both runs of a resume test flush alike).
        nonlocal local_sum, local_count
        totals = accelerator.reduce(torch.stack([local_sum, local_sum.new_tensor(float(local_count))]), "sum")
        progress.loss_sum += float(totals[0])
        progress.loss_count += int(round(float(totals[1])))
        local_sum = torch.zeros_like(local_sum)
        local_count = 0

    for epoch in range(progress.epoch, epochs):
        task.train()
        train_loader.set_epoch(epoch)
        skip = progress.batch_in_epoch
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in loader:
            with accelerator.accumulate(task):
                out = task(input_transform(batch["image"]), batch_target(batch))
                accelerator.backward(out["loss"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            local_sum += out["loss"].detach().double()
            local_count += 1
            progress.batch_in_epoch += 1
            bar.update(1)
            if accelerator.sync_gradients:
                progress.global_step += 1
                if (checkpoint_every and progress.global_step % checkpoint_every == 0
                        and progress.batch_in_epoch < steps_per_epoch):
                    flush()
                    _save_checkpoint(accelerator, progress, checkpoint_dir / f"step_{progress.global_step}",
                                     keep_checkpoints)
        flush()
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": progress.loss_sum / max(progress.loss_count, 1),
            "lr": float(scheduler.get_last_lr()[0]),
            "global_step": progress.global_step,
        }
        if evaluate is not None:
            record["val_acc"] = float(evaluate())
            if progress.best_metric is None or record["val_acc"] > progress.best_metric:
                progress.best_metric, progress.best_epoch = record["val_acc"], epoch + 1
                if on_best is not None:
                    on_best(progress)
        progress.history.append(record)
        progress.epoch, progress.batch_in_epoch = epoch + 1, 0
        progress.loss_sum, progress.loss_count = 0.0, 0
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=progress.global_step)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_acc")}, refresh=False)
        _save_checkpoint(accelerator, progress, checkpoint_dir / f"epoch_{epoch + 1}", keep_checkpoints)
    bar.close()
    return progress


# ---------------------------------------------------------------------- models out
def save_model(accelerator: Any, model: nn.Module, folder: PathLike) -> None:
    """Writes ``model`` with ``timm.models.save_for_hf`` (main process), loadable as ``local-dir:FOLDER``."""
    import timm

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        timm.models.save_for_hf(accelerator.unwrap_model(model), str(folder), safe_serialization=True)
    accelerator.wait_for_everyone()


def state_checksum(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, shapes, dtypes and bytes), to compare weights across processes/runs."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tracker_config(args: argparse.Namespace) -> Dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
    return out


def train_and_evaluate(
    accelerator: Any,
    args: argparse.Namespace,
    *,
    task: nn.Module,
    model: nn.Module,
    train_set: Any,
    test_set: Any,
    val_set: Any = None,
    image_shape: Optional[Sequence[int]] = None,
    project_name: str = "db3",
    report: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The shared back half of the recipes: loaders, optimizer, schedule, prepare, train, evaluate, save, report.

    Trains ``task`` (whose trainable module is ``model``) on ``train_set`` with :func:`train_loop`; selects the
    best epoch by accuracy on ``val_set`` (when given) and saves it to ``OUTPUT_DIR/model_best``; saves the
    final model to ``OUTPUT_DIR/model``; scores both on ``test_set``; writes ``OUTPUT_DIR/results.json``.

    Args:
        accelerator: from :func:`make_accelerator`.
        args: the recipe options (see :func:`add_training_args`).
        task: a :class:`~timm.task.TrainingTask` over ``model``.
        model: the timm model being trained (saved and evaluated).
        train_set / val_set / test_set: datasets of ``{"image", "label"[, "soft_logits"]}`` rows, pixel-space images.
        image_shape: ``(C, H, W)`` of the images (for resizing to a fixed-size model).
        project_name: tracker project name.
        report: extra entries for ``results.json`` (data, teacher, transfer set, ...).

    Returns:
        The results dict written to ``results.json`` (on every process).
    """
    t0 = time.monotonic()
    out = Path(args.output_dir)
    n = accelerator.num_processes
    if args.batch_size % n:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the number of processes ({n})")
    eval_bs = int(math.ceil(args.eval_batch_size / n) * n)
    train_loader = _loader(train_set, args.batch_size, shuffle=True, num_workers=args.num_workers)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)
    test_loader = _loader(test_set, eval_bs, shuffle=False, num_workers=args.num_workers)
    val_loader = _loader(val_set, eval_bs, shuffle=False, num_workers=args.num_workers) if val_set is not None else None
    task, optimizer, train_loader, scheduler, test_loader = accelerator.prepare(
        task, optimizer, train_loader, scheduler, test_loader
    )
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    if args.log_with is not None:
        accelerator.init_trackers(project_name, config=_tracker_config(args))
    transform = input_transform_for(model, image_shape)

    def on_best(progress: TrainProgress) -> None:
        save_model(accelerator, model, out / "model_best")

    progress = train_loop(
        accelerator, task, optimizer, scheduler, train_loader,
        epochs=args.epochs,
        input_transform=transform,
        checkpoint_dir=out / CHECKPOINTS_DIR,
        evaluate=(lambda: evaluate_accuracy(accelerator, model, val_loader, transform)) if val_loader is not None else None,
        on_best=on_best,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        progress_bar=not args.no_progress,
    )
    save_model(accelerator, model, out / "model")
    from accelerate.utils import gather_object

    checksums = gather_object([state_checksum(accelerator.unwrap_model(model))])
    final_test = evaluate_accuracy(accelerator, model, test_loader, transform)
    last = progress.history[-1] if progress.history else {}
    results: Dict[str, Any] = dict(report or {})
    results.update({
        "num_processes": n,
        "mixed_precision": args.mixed_precision,
        "epochs": args.epochs,
        "global_steps": progress.global_step,
        "final": {"epoch": last.get("epoch"), "test_acc": final_test, "val_acc": last.get("val_acc"),
                  "model": str(out / "model")},
        "best": None,
        "history": progress.history,
        "weights_sha256_per_process": checksums,
    })
    if progress.best_epoch is not None and (out / "model_best" / "model.safetensors").is_file():
        from .oracle import load_checkpoint_state_dict

        accelerator.unwrap_model(model).load_state_dict(load_checkpoint_state_dict(out / "model_best" / "model.safetensors"))
        results["best"] = {"epoch": progress.best_epoch, "val_acc": progress.best_metric,
                           "test_acc": evaluate_accuracy(accelerator, model, test_loader, transform),
                           "model": str(out / "model_best")}
    results["wall_s"] = round(time.monotonic() - t0, 2)
    if accelerator.is_main_process:
        (out / RESULTS_NAME).write_text(json.dumps(results, indent=2, default=str) + "\n")
        val_name = (report or {}).get("validation", {}).get("source", "validation split")
        accelerator.print(f"final model (epoch {last.get('epoch')}): test accuracy {final_test:.2%} -> {out / 'model'}")
        if results["best"]:
            b = results["best"]
            accelerator.print(f"best model by validation accuracy ({val_name}; epoch {b['epoch']}, "
                              f"val {b['val_acc']:.2%}): test accuracy {b['test_acc']:.2%} -> {out / 'model_best'}")
        accelerator.print(f"results written to {out / RESULTS_NAME}")
    accelerator.wait_for_everyone()
    if args.log_with is not None:
        accelerator.end_training()
    return results


# ---------------------------------------------------------------------- DB3KD transfer sets
RECIPE_MARKER = "db3_recipe.json"


def add_transfer_args(parser: argparse.ArgumentParser) -> None:
    """Adds the transfer-set options of the distillation recipe (labeler, references, budget, zero-shot)."""
    g = parser.add_argument_group("transfer set")
    g.add_argument("--transfer-dir", metavar="DIR",
                   help="a `db3 label` / label_dataset output folder to distil from; when it holds no finished run, "
                        "the training images are soft-labelled into it on the fly (default: OUTPUT_DIR/transfer)")
    g.add_argument("--labeler", default="mbd", help="registered labeler for on-the-fly labelling (sd, bd, mbd, ...)")
    g.add_argument("--queries-per-target", type=_positive_int, metavar="Q",
                   help="query budget per (sample, target class) for labelers that search boundaries")
    g.add_argument("--labeler-kwargs", type=json_object, default={}, metavar="JSON", help="more labeler options")
    g.add_argument("--prior", metavar="NAME_OR_local-dir:PATH",
                   help="white-box surrogate guiding mbd's boundary search, e.g. a student trained on the teacher's "
                        "hard labels (see db3_timm.priors)")
    g.add_argument("--prior-checkpoint", metavar="FILE", help="surrogate weights (.safetensors/.pt)")
    g.add_argument("--references-per-class", type=int, default=10, metavar="K",
                   help="the first K training images of each class serve as references (teacher-checked once)")
    g.add_argument("--shard-size", type=_positive_int, default=512, metavar="N")
    g.add_argument("--budget", type=int, metavar="Q", help="cap on the teacher queries of this run (per process)")
    g.add_argument("--zero-shot", action="store_true",
                   help="ZSDB3KD: no training images; pseudo samples grown from noise by the registered 'zsdb3' "
                        "generator (kept, resumable, in OUTPUT_DIR/zero_shot), then soft-labelled with --labeler")
    g.add_argument("--zero-shot-samples-per-class", type=_positive_int, default=100, metavar="N")
    g.add_argument("--zero-shot-iterations", type=int, default=10, metavar="K", help="push-away iterations")
    g.add_argument("--zero-shot-queries-per-iteration", type=_positive_int, default=500, metavar="Q",
                   help="per-sample query budget of one iteration (at least 20)")
    g.add_argument("--zero-shot-step", type=float, default=0.5, help="initial L2 length of a push-away move")
    g.add_argument("--generator-kwargs", type=json_object, default={}, metavar="JSON",
                   help="--zero-shot: more generator options, e.g. '{\"max_init_queries\": 100000}'")
    g.add_argument("--zero-shot-start", choices=["reference", "smooth"], default="smooth",
                   help="start noise of the generator: low-frequency noise (default) or the paper's per-pixel noise")
    g.add_argument("--zero-shot-pool", type=int, default=0, metavar="N",
                   help="also distil from N teacher-labelled start-search images, soft-labelled with 'sd' "
                        "against the pseudo samples (one query each)")
    g.add_argument("--zero-shot-mixes", type=int, default=0, metavar="N",
                   help="also distil from N teacher-labelled mixes of two pseudo-sample/pool images (one query each)")


@dataclass
class TransferSet:
    """What the student trains on and is selected by.

    Attributes:
        train: rows ``{"image", "label", "soft_logits"}`` (``label`` = the teacher's label).
        val: rows ``{"image", "label"}`` for best-epoch selection, or ``None``.
        image_shape: ``(C, H, W)`` of the images.
        info: provenance for ``results.json`` (``transfer`` and ``validation`` entries).
    """

    train: Any
    val: Any
    image_shape: Tuple[int, int, int]
    info: Dict[str, Any]


def _is_finished_run(folder: Path) -> bool:
    from .labeling import read_manifest

    try:
        return bool(read_manifest(folder).get("complete"))
    except (FileNotFoundError, ValueError):
        return False


def _rows_from_transfer(ds: Any, args: argparse.Namespace, load_split: Callable[[str], Any],
                        what: str) -> Tuple[Any, Any, Dict[str, Any]]:
    """Validation for transfer sets with no held-out real images: --val-split, else held-out transfer rows."""
    if args.val_split:
        val = load_split(args.val_split)
        return ds, TensorDictDataset(val.images, val.labels), {
            "source": f"{args.data} split {args.val_split!r}", "labels": "dataset", "rows": len(val)}
    train_idx, val_idx = holdout_split(len(ds), args.val_fraction, args.seed)
    if len(val_idx) == 0:
        return ds, None, {"source": None, "labels": None, "rows": 0}
    return ds.select(train_idx.tolist()), ds.select(val_idx.tolist()).select_columns(["image", "label"]), {
        "source": f"{len(val_idx)} held-out rows of the {what} (seed {args.seed})",
        "labels": "teacher (agreement with the teacher, not ground truth)", "rows": len(val_idx)}


def _zero_shot_samples(accelerator: Any, oracle: Any, args: argparse.Namespace,
                       folder: Path) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, int], torch.Tensor, Optional[torch.Tensor]]:
    """Pseudo samples, their teacher labels, the generation's query counts and the start pool's images and
    teacher labels from ``create_generator('zsdb3', oracle)``, grown by the main process only (they cost
    queries), resumable in ``folder/state`` and kept in ``folder/pseudo.safetensors`` (+ ``queries.json``).
    The pool's labels are ``None`` for a file written before they were kept."""
    from safetensors.torch import load_file, save_file

    from . import create_generator

    path = folder / "pseudo.safetensors"
    if accelerator.is_main_process and not path.is_file():
        cfg = {"start": args.zero_shot_start, "start_pool": args.zero_shot_pool, "mixes": args.zero_shot_mixes,
               **(args.generator_kwargs or {})}
        gen = create_generator("zsdb3", oracle, seed=args.seed, **cfg)
        pseudo = gen.generate(args.zero_shot_samples_per_class, args.zero_shot_iterations,
                              args.zero_shot_queries_per_iteration, step=args.zero_shot_step, out_dir=folder / "state",
                              progress=not args.no_progress)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".pseudo.safetensors.tmp"
        save_file({"images": pseudo.images.detach().float().cpu().contiguous(),
                   "labels": pseudo.labels.detach().long().cpu().contiguous(),
                   "pool_images": (pseudo.pool_images if pseudo.pool_images is not None else pseudo.images[:0])
                   .detach().float().cpu().contiguous(),
                   "pool_labels": (pseudo.pool_labels if pseudo.pool_labels is not None else pseudo.labels[:0])
                   .detach().long().cpu().contiguous()}, str(tmp))
        (folder / "queries.json").write_text(json.dumps({k: int(v) for k, v in dict(pseudo.queries).items()}) + "\n")
        os.replace(tmp, path)  # last: marks the generation finished
    accelerator.wait_for_everyone()
    saved = load_file(str(path))
    queries = json.loads((folder / "queries.json").read_text()) if (folder / "queries.json").is_file() else {}
    return saved["images"], saved["labels"], queries, saved.get("pool_images", saved["images"][:0]), saved.get("pool_labels")


def prepare_transfer_set(accelerator: Any, oracle: Any, args: argparse.Namespace, *,
                         image_size: Optional[int]) -> TransferSet:
    """Builds the DB3KD transfer set (and a validation set) for the distillation recipe.

    * ``--transfer-dir`` holding a finished :func:`~db3_timm.labeling.label_dataset` run made elsewhere (e.g.
      ``db3 label``): distil from it as is; validation = ``--val-split``, else held-out transfer rows scored
      against the teacher's labels.
    * otherwise: hold out ``--val-fraction`` of the training split (or use ``--val-split``) with its dataset
      labels for validation, and soft-label the rest with ``create_labeler(--labeler, oracle)`` through
      ``label_dataset`` into the transfer folder -- resumable, split across processes, and reused as is
      when the same command runs again.
    * ``--zero-shot``: pseudo samples grown from noise by ``create_generator('zsdb3', oracle)`` (by the main
      process; resumable and kept in ``OUTPUT_DIR/zero_shot``), soft-labelled the same way; validation =
      ``--val-split``, else held-out pseudo samples scored against the teacher's labels.

    Returns:
        The :class:`TransferSet`.
    """
    from . import create_labeler
    from .data import load_image_dataset
    from .labeling import label_dataset, load_labeled_dataset, read_manifest

    out = Path(args.output_dir)
    folder = Path(args.transfer_dir) if args.transfer_dir else out / "transfer"

    def load_split(split: str, limit: Optional[int] = None) -> Any:
        return load_image_dataset(args.data, split, image_size=image_size, limit=limit)

    def labeler() -> Any:
        cfg = dict(args.labeler_kwargs or {})
        cfg.setdefault("seed", args.seed)
        if args.queries_per_target is not None:
            cfg["queries_per_target"] = args.queries_per_target
        if args.prior:
            from .oracle import create_timm_model

            cfg["prior"] = create_timm_model(args.prior, args.prior_checkpoint, num_classes=oracle.num_classes,
                                             device=oracle.device)
        return create_labeler(args.labeler, oracle, **cfg)

    progress = not args.no_progress
    columns = ["image", "label", "soft_logits"]
    if _is_finished_run(folder) and not (folder / RECIPE_MARKER).is_file():
        ds = load_labeled_dataset(folder).with_format("torch", columns=columns)
        train, val, val_info = _rows_from_transfer(ds, args, load_split, "transfer set")
        info = {"transfer": {"source": f"pre-labelled {folder}", "rows": len(train),
                             "queries": read_manifest(folder)["queries"]["total"]}, "validation": val_info}
        return TransferSet(train, val, tuple(ds.features["image"].shape), info)

    marker = {"data": args.data, "split": args.train_split, "limit": args.limit, "image_size": image_size,
              "val_split": args.val_split, "val_fraction": args.val_fraction, "seed": args.seed,
              "zero_shot": bool(args.zero_shot), "zero_shot_start": args.zero_shot_start,
              "zero_shot_pool": args.zero_shot_pool, "zero_shot_mixes": args.zero_shot_mixes}
    extra: Dict[str, Any] = {}
    if args.zero_shot:
        from .labelers.base import References

        images, labels, extra["generation_queries"], pool_images, pool_labels = _zero_shot_samples(
            accelerator, oracle, args, out / "zero_shot")
        real_val = None
        if args.val_split:
            val = load_split(args.val_split)
            real_val = TensorDictDataset(val.images, val.labels)
            val_info_source = {"source": f"{args.data} split {args.val_split!r}", "labels": "dataset", "rows": len(val)}
        else:  # held out before labelling: their teacher labels are known from the generation, no query spent
            keep, held = holdout_split(len(images), args.val_fraction, args.seed)
            if len(held):
                real_val = TensorDictDataset(images[held], labels[held])
            val_info_source = {"source": f"{len(held)} held-out pseudo samples (seed {args.seed})" if len(held) else None,
                               "labels": "teacher (agreement with the teacher, not ground truth)" if len(held) else None,
                               "rows": len(held)}
            images, labels = images[keep], labels[keep]
        refs = dataset_labels = None
        if args.references_per_class > 0:  # the pseudo samples of the other classes serve as references
            idx = references_per_class(labels, oracle.num_classes or int(labels.max()) + 1, args.references_per_class)
            refs = References(images[idx], labels[idx], 0)  # their labels are the teacher's answers already
    else:
        data = load_split(args.train_split, args.limit)
        if args.val_split:
            val = load_split(args.val_split)
            real_val = TensorDictDataset(val.images, val.labels)
            keep = torch.arange(len(data))
            val_info_source = {"source": f"{args.data} split {args.val_split!r}", "labels": "dataset",
                               "rows": len(val)}
        else:
            keep, held = holdout_split(len(data), args.val_fraction, args.seed)
            real_val = TensorDictDataset(data.images[held], data.labels[held]) if len(held) else None
            val_info_source = {"source": f"{len(held)} held-out images of {args.data} split {args.train_split!r} "
                                         f"(seed {args.seed})" if len(held) else None,
                               "labels": "dataset" if len(held) else None, "rows": len(held)}
        pool = data.subset(keep)
        images = pool.images
        refs = dataset_labels = None
        if args.references_per_class > 0:
            idx = references_per_class(pool.labels, pool.num_classes, args.references_per_class)
            refs, dataset_labels = pool.images[idx], pool.labels[idx]
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RECIPE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    accelerator.wait_for_everyone()
    # Pseudo samples were labelled by the teacher as they were drawn: no query asks again.
    ds = label_dataset(labeler(), images, folder, references=refs, dataset_labels=dataset_labels,
                       teacher_labels=labels if args.zero_shot else None, shard_size=args.shard_size, seed=args.seed, accelerator=accelerator, progress=progress)
    queries = read_manifest(folder)["queries"]["total"]
    source = (f"{len(ds)} zero-shot pseudo samples (zsdb3, {args.zero_shot_iterations} iterations)" if args.zero_shot else
              f"{len(ds)} images of {args.data} split {args.train_split!r}") + f", labelled with {args.labeler!r} -> {folder}"
    if args.zero_shot and len(pool_images):
        import datasets

        # The start pool: many cheap teacher-labelled images, soft-labelled by distance to the pseudo samples.
        pool_refs = References(images, labels, 0)
        pool_ds = label_dataset(create_labeler("sd", oracle, seed=args.seed), pool_images, folder / "pool",
                                references=pool_refs, teacher_labels=pool_labels, shard_size=args.shard_size, seed=args.seed,
                                accelerator=accelerator, progress=progress)
        ds = datasets.concatenate_datasets([ds, pool_ds])
        queries += read_manifest(folder / "pool")["queries"]["total"]
        source += f" + {len(pool_ds)} start-pool / mixed images labelled with 'sd' -> {folder / 'pool'}"
    ds = ds.with_format("torch", columns=columns)
    info = {"transfer": {"source": source, "rows": len(ds), "queries": queries, **extra}, "validation": val_info_source}
    return TransferSet(ds, real_val, tuple(images.shape[1:]), info)
