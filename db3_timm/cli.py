"""The ``db3`` command. Argument parsing lives here; the work lives in the library."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from ._argtypes import json_object
from .version import __version__

__all__ = ["main", "build_parser"]


def _cmd_list(args: argparse.Namespace) -> int:
    import timm

    from . import list_generators, list_labelers
    from . import models as _models  # noqa: F401  (registers the paper architectures)

    if args.kind == "models":
        for name in timm.list_models(module=["lenet", "alexnet_cifar"]):
            model = timm.create_model(name)
            params = sum(p.numel() for p in model.parameters())
            print(f"{name:24s} {params:>10,d} params  input {model.pretrained_cfg['input_size']}")
    else:
        for name in (list_labelers if args.kind == "labelers" else list_generators)(args.filter):
            print(name)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, seed=args.seed, device=args.device)
    return 0


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """Returns an argparse ``type`` that accepts integers ``>= minimum`` and names a bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        return value

    return parse


def _labeler_name(text: str) -> str:
    from . import is_labeler, list_labelers

    if not is_labeler(text):
        raise argparse.ArgumentTypeError(f"unknown labeler {text!r}; known labelers: {', '.join(list_labelers()) or '(none)'}")
    return text


def _model_spec(role: str) -> Callable[[str], str]:
    """Returns an argparse type accepting a registered timm name, ``local-dir:PATH`` or ``hf-hub:ID`` for ``role``."""

    def parse(text: str) -> str:
        if text.startswith("local-dir:"):
            folder = text.split(":", 1)[1]
            if not Path(folder).expanduser().is_dir():
                raise argparse.ArgumentTypeError(f"{role} folder not found: {folder!r} (from {text!r})")
            return "local-dir:" + str(Path(folder).expanduser())
        if ":" not in text:
            import timm

            from . import models as _models  # noqa: F401  (registers the paper architectures)

            if not timm.is_model(text):
                raise argparse.ArgumentTypeError(
                    f"unknown timm model {text!r}; pass a registered name, local-dir:PATH or hf-hub:ORG/NAME"
                )
        return text

    return parse


_teacher_spec = _model_spec("teacher")


def _existing_file(text: str) -> str:
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text!r}")
    return str(Path(text).expanduser())


def _references_per_class(labels: Any, num_classes: int, k: int) -> Any:
    """Indices of the first ``k`` samples of every class, in dataset order."""
    import torch

    picked = [torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def _cmd_label(args: argparse.Namespace) -> int:
    import torch

    from . import create_labeler
    from .data import load_image_dataset
    from .labeling import ConfigMismatchError, DistributedSetupError, label_dataset, read_manifest
    from .oracle import LabelOracle, QueryBudgetExceeded

    error = args.parser_error
    t0 = time.monotonic()
    state = None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from accelerate.state import PartialState
        from accelerate.utils import parse_flag_from_env

        # One process per device under `accelerate launch`; label_dataset splits the shards.
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    device = args.device or (state.device if state is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    is_main = state is None or state.is_main_process

    try:
        oracle = LabelOracle.from_timm(
            args.teacher, args.checkpoint, num_classes=args.num_classes, device=device, budget=args.budget
        )
    except (OSError, ValueError, RuntimeError) as err:
        error(f"argument --teacher: cannot load {args.teacher!r}: {err}")
    size = args.image_size
    if size is None and oracle.input_size is not None and oracle.input_size[1] == oracle.input_size[2]:
        size = oracle.input_size[1]  # store what the teacher sees, so students train on the same pixels
    try:
        data = load_image_dataset(args.data, args.split, image_size=size, limit=args.limit)
    except (OSError, ValueError, ImportError) as err:
        error(f"argument --data: cannot load {args.data!r} (split {args.split!r}): {err}")
    if oracle.input_size is not None and data.images.shape[1] != oracle.input_size[0]:
        error(
            f"argument --data: {args.data!r} has {data.images.shape[1]} channel(s) but teacher {args.teacher!r} "
            f"expects {oracle.input_size[0]}"
        )
    cfg = {"seed": args.seed, **args.labeler_kwargs}
    if args.queries_per_target is not None:
        cfg["queries_per_target"] = args.queries_per_target  # only when asked: the labeler rejects unknown options
    if args.prior is not None:
        from .oracle import create_timm_model

        try:
            cfg["prior"] = create_timm_model(args.prior, args.prior_checkpoint, num_classes=oracle.num_classes,
                                             device=device)
        except (OSError, ValueError, RuntimeError) as err:
            error(f"argument --prior: cannot load {args.prior!r}: {err}")
    try:
        labeler = create_labeler(args.labeler, oracle, **cfg)
    except (TypeError, ValueError) as err:
        shown = {**cfg, "prior": args.prior} if "prior" in cfg else cfg
        error(f"argument --labeler: cannot build {args.labeler!r} with {shown}: {err}")

    references = dataset_labels = None
    if args.references_per_class > 0:
        idx = _references_per_class(data.labels, data.num_classes, args.references_per_class)
        references, dataset_labels = data.images[idx], data.labels[idx]
    try:
        dataset = label_dataset(
            labeler,
            data.images,
            args.out,
            references=references,
            dataset_labels=dataset_labels,
            shard_size=args.shard_size,
            seed=args.seed,
            accelerator=state,
            progress=not args.no_progress,
        )
    except (ConfigMismatchError, DistributedSetupError) as err:
        error(f"argument --out: {err}" if isinstance(err, ConfigMismatchError) else str(err))
    except QueryBudgetExceeded as err:
        print(
            f"db3 label: {err}. Finished shards are kept in {args.out!r}; rerun the same command with a larger "
            f"--budget to resume.",
            file=sys.stderr,
        )
        return 3
    if is_main:
        manifest = read_manifest(args.out)
        q = manifest["queries"]
        n = len(dataset)
        sample_queries = sum(s["sample_queries"] for s in manifest["shards"])
        print(f"labelled {n} samples ({manifest['num_shards']} shards) with {args.labeler!r} -> {args.out}")
        print(
            f"queries: {q['total']} total = {q['reference_check']} reference check + {q['shards']} samples"
            + (f" + {q['aborted']} aborted" if q["aborted"] else "")
            + f"; {sample_queries / n:.2f} per sample ({q['total'] / n:.2f} overall)"
        )
        if oracle.remaining is not None:
            print(f"budget: {oracle.remaining} of {oracle.budget} queries left (this process)")
        print(f"wall time: {time.monotonic() - t0:.1f} s")
    return 0


def _shape(text: str) -> Tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive integers (e.g. 1,28,28), got {text!r}")
    return dims  # type: ignore[return-value]


def _cmd_generate(args: argparse.Namespace) -> int:
    from .oracle import LabelOracle
    from .zeroshot import run_zero_shot

    try:
        oracle = LabelOracle.from_timm(args.teacher, args.checkpoint, num_classes=args.num_classes,
                                       device=args.device or "cpu", budget=args.budget)
    except (OSError, ValueError, RuntimeError) as err:
        args.parser_error(f"argument --teacher: cannot load {args.teacher!r}: {err}")
    labeler_cfg = {"queries_per_target": args.queries_per_target} if args.queries_per_target and args.labeler != "sd" else {}
    labeler_cfg.update(args.labeler_kwargs)
    if args.labeler:
        from . import create_labeler

        try:  # before the generation spends its queries, not after
            create_labeler(args.labeler, oracle, **labeler_cfg)
        except (KeyError, TypeError, ValueError) as err:
            args.parser_error(f"argument --labeler: cannot build {args.labeler!r} with {labeler_cfg}: {err}")
    t0 = time.monotonic()
    summary = run_zero_shot(
        oracle, args.out, samples_per_class=args.samples_per_class, iterations=args.iterations,
        queries_per_iteration=args.queries_per_iteration, step=args.step, seed=args.seed,
        num_classes=args.num_classes, input_shape=args.input_shape,
        labeler=args.labeler or None, labeler_cfg=labeler_cfg, progress=not args.no_progress,
        generator_cfg={"max_init_queries": args.max_init_queries, "start": args.start,
                       "start_pool": args.start_pool, "mixes": args.mixes},
        step_growth=args.step_growth,
    )
    q = summary["queries"]
    print(f"{summary['samples']} pseudo samples + {summary['pool']:,d} start-pool images -> {args.out} "
          f"(missing classes: {summary['missing_classes'] or 'none'})")
    print("queries: " + ", ".join(f"{k} {v:,d}" for k, v in q.items()))
    if summary["mean_robustness"]:
        rob = summary["mean_robustness"]
        print(f"mean robustness: {rob[0]:.3f} (iteration 1) -> {rob[-1]:.3f} (iteration {len(rob)})")
    dups = {c: round(v["near_duplicate_fraction"], 3) for c, v in summary["diversity"].items()}
    print(f"near-duplicate fraction per class: {dups}")
    print(f"wall time: {time.monotonic() - t0:.1f} s")
    return 0


def _repo_id(text: str) -> str:
    from .hub import validate_repo_id

    try:
        return validate_repo_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _existing_dir(text: str) -> str:
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {text!r}")
    return str(Path(text).expanduser())


def _token_from_env(args: argparse.Namespace) -> Optional[str]:
    if args.token_env is None:
        return None
    token = os.environ.get(args.token_env) or None
    if token is None:  # name the variable, never its value
        args.parser_error(f"argument --token-env: environment variable {args.token_env!r} is not set or empty")
    return token


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_student
    from .oracle import HubUnavailableError

    token = _token_from_env(args)
    try:
        url = push_student(args.folder, args.repo, token=token, private=args.private, commit_message=args.message)
    except FileNotFoundError as err:
        args.parser_error(f"argument FOLDER: {err}")
    except (HubUnavailableError, PermissionError) as err:
        print(f"db3 push: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {args.repo}: {url}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve import create_app_from_timm
    except ImportError as err:
        args.parser_error(f"db3 serve needs the 'serve' extra (pip install 'db3-timm[serve]'): {err}")
    token = _token_from_env(args)
    try:
        app = create_app_from_timm(
            args.model, args.checkpoint, num_classes=args.num_classes, device=args.device,
            model_name=args.name, token=token, max_batch_size=args.max_batch_size,
            quota=args.quota, quota_window=args.quota_window,
        )
    except (OSError, ValueError, RuntimeError) as err:
        args.parser_error(f"argument --model: cannot load {args.model!r}: {err}")
    print(f"serving {args.model!r} label-only (Open Inference Protocol v2) at "
          f"http://{args.host}:{args.port}/v2/models/{app.state.model_name}/infer "
          f"(auth: {'bearer token from $' + args.token_env if token else 'none'}"
          f"{f', quota {args.quota}/{args.quota_window:g}s' if args.quota else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, type=_teacher_spec, metavar="NAME_OR_local-dir:PATH",
                   help="timm model name, local-dir:PATH (timm save_for_hf folder) or hf-hub:ORG/NAME")
    p.add_argument("--checkpoint", type=_existing_file, metavar="FILE", help="teacher weights (.safetensors/.pt)")
    p.add_argument("--num-classes", type=_int_at_least(2), metavar="N",
                   help="teacher classifier size (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``db3`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="db3",
        description="Decision-based black-box knowledge distillation (DB3KD / ZSDB3KD) for timm models.",
    )
    parser.add_argument("--version", action="version", version=f"db3-timm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered models, labelers or generators")
    p.add_argument("kind", choices=["models", "labelers", "generators"])
    p.add_argument("filter", nargs="?", default="", help="fnmatch filter, e.g. '*bd'")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("demo", help="run the end-to-end demo on scikit-learn digits (a few minutes on CPU)")
    p.add_argument("--out", default=".demo", help="folder for the teacher, figures and results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "label",
        help="soft-label a dataset with a label-only teacher into resumable Hugging Face dataset shards",
        description="Soft-label every image of --data with a DB3 labeler; rerun the same command to resume.",
    )
    _add_teacher_args(p)
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec, e.g. digits, fashion-mnist, hf:PATH")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=_int_at_least(1), metavar="N", help="label only the first N samples")
    p.add_argument("--image-size", type=_int_at_least(1), metavar="N",
                   help="resize images to NxN (default: the teacher's input size)")
    p.add_argument("--labeler", default="mbd", type=_labeler_name, help="registered labeler (see `db3 list labelers`)")
    p.add_argument("--queries-per-target", type=_int_at_least(1), metavar="Q",
                   help="query budget per (sample, target class) for labelers that search boundaries")
    p.add_argument("--labeler-kwargs", type=json_object, default={}, metavar="JSON",
                   help="more labeler options, e.g. '{\"momentum\": 0.5, \"probes\": 40}' (see the labeler's docstring)")
    p.add_argument("--references-per-class", type=_int_at_least(0), default=10, metavar="K",
                   help="the first K images of each class serve as references (teacher-checked once); 0: none")
    p.add_argument("--prior", type=_model_spec("prior"), metavar="NAME_OR_local-dir:PATH",
                   help="white-box surrogate whose gradients guide mbd's boundary search (e.g. a student trained "
                        "on the teacher's hard labels, saved with `db3_timm.hub.save_student`)")
    p.add_argument("--prior-checkpoint", type=_existing_file, metavar="FILE", help="surrogate weights")
    p.add_argument("--shard-size", type=_int_at_least(1), default=512, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=_int_at_least(0), metavar="Q",
                   help="cap on the oracle queries this invocation may spend (per process)")
    p.add_argument("--device", default=None, help="teacher device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.json, references, shards/)")
    p.set_defaults(func=_cmd_label, parser_error=p.error)

    p = sub.add_parser(
        "generate",
        help="grow a zero-shot transfer set (ZSDB3) from noise with label queries only",
        description="Generate pseudo samples per class, write PNG grids, a robustness plot and a diversity report, "
                    "and soft-label them; rerun the same command to resume.",
    )
    _add_teacher_args(p)
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="teacher input shape (default: the model's)")
    p.add_argument("--samples-per-class", type=_int_at_least(1), required=True, metavar="N")
    p.add_argument("--iterations", type=_int_at_least(0), default=10, metavar="K")
    p.add_argument("--queries-per-iteration", type=_int_at_least(20), default=500, metavar="Q",
                   help="exact per-sample query budget of one iteration")
    p.add_argument("--step", type=float, default=0.5, help="initial L2 length of a push-away move")
    p.add_argument("--step-growth", type=float, default=1.0, metavar="F",
                   help="a sample's step is multiplied by F after a kept move (1 = fixed, as the reference)")
    p.add_argument("--start", choices=["reference", "smooth"], default="smooth",
                   help="start noise: low-frequency noise (default; far better students) or the paper's per-pixel noise")
    p.add_argument("--start-pool", type=_int_at_least(0), default=0, metavar="N",
                   help="keep N teacher-labelled start-search images in the transfer set (labelled with 'sd')")
    p.add_argument("--mixes", type=_int_at_least(0), default=0, metavar="N",
                   help="add N teacher-labelled mixes of two pseudo-sample/pool images to the pool (one query each)")
    p.add_argument("--max-init-queries", type=_int_at_least(1), default=200_000, metavar="Q",
                   help="cap on the noise search for starting samples; classes never answered are reported")
    p.add_argument("--labeler", default="mbd", help="labeler for the transfer set ('' to skip labelling)")
    p.add_argument("--queries-per-target", type=_int_at_least(1), default=200, metavar="Q")
    p.add_argument("--labeler-kwargs", type=json_object, default={}, metavar="JSON", help="more labeler options")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=_int_at_least(0), metavar="Q", help="cap on the oracle queries of this run")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_cmd_generate, parser_error=p.error)

    p = sub.add_parser(
        "push",
        help="upload a saved student (db3_timm.hub.save_student folder) to a Hugging Face Hub model repo",
        description="Create ORG/NAME if needed and upload FOLDER (config.json, model.safetensors, README.md, db3.json).",
    )
    p.add_argument("folder", type=_existing_dir, metavar="FOLDER", help="folder written by db3_timm.hub.save_student")
    p.add_argument("--repo", required=True, type=_repo_id, metavar="ORG/NAME", help="Hub model repo id")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist yet)")
    p.add_argument("--token-env", metavar="VAR",
                   help="read the Hub write token from environment variable VAR (default: HF_TOKEN or the stored login)")
    p.add_argument("--message", metavar="TEXT", help="commit message (default names the architecture and teacher)")
    p.set_defaults(func=_cmd_push, parser_error=p.error)

    p = sub.add_parser(
        "serve",
        help="serve a timm teacher as a label-only HTTP endpoint (Open Inference Protocol v2, KServe/Triton style)",
        description="Answer only argmax labels at POST /v2/models/NAME/infer; query it with LabelOracle.from_url.",
    )
    p.add_argument("--model", required=True, type=_teacher_spec, metavar="NAME_OR_local-dir:PATH",
                   help="timm model name, local-dir:PATH or hf-hub:ORG/NAME")
    p.add_argument("--checkpoint", type=_existing_file, metavar="FILE", help="model weights (.safetensors/.pt)")
    p.add_argument("--num-classes", type=_int_at_least(2), metavar="N")
    p.add_argument("--name", metavar="NAME", help="model name in the URL (default: the last part of --model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=_int_at_least(0), default=8000)
    p.add_argument("--token-env", metavar="VAR", help="require the bearer token held in environment variable VAR")
    p.add_argument("--max-batch-size", type=_int_at_least(1), default=1024, metavar="N")
    p.add_argument("--quota", type=_int_at_least(1), metavar="Q", help="queries per client per --quota-window")
    p.add_argument("--quota-window", type=float, default=60.0, metavar="S", help="quota window in seconds")
    p.add_argument("--device", default=None, help="model device (default: cpu)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_cmd_serve, parser_error=p.error)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the ``db3`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
