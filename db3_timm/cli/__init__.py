"""The ``db3`` command: argument parsing lives here (and in ``recipes/``); the work lives in the library."""
from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import List, Optional

from ..version import __version__
from . import commands
from . import options as opt

__all__ = ["main", "build_parser"]


def _repo_id(text: str) -> str:
    from ..hub import validate_repo_id

    try:
        return validate_repo_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _existing_dir(text: str) -> str:
    from pathlib import Path

    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {text!r}")
    return str(Path(text).expanduser())


def _sub(sub: argparse._SubParsersAction, name: str, help: str, description: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=opt.Formatter)
    p.set_defaults(func=func, parser_error=p.error, parser=p)
    return p


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "label", "soft-label a dataset with a label-only teacher into a resumable Hugging Face dataset",
             "Soft-label every image of --data with a DB3 labeler; rerun the same command to resume.", commands.cmd_label)
    opt.add_teacher(p)
    opt.add_data(p, splits=False)
    opt.add_labeling(p)
    p.add_argument("--dry-run", action="store_true", help="print the most queries it can spend and the estimated time, "
                                                          "then stop")
    opt.add_job(p)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "generate", "make a zero-shot transfer set with label queries only (synth or zsdb3)",
             "--generator zsdb3: grow pseudo samples per class from noise, write labelled PNG grids, a robustness plot "
             "and a diversity report, and soft-label them into one transfer set. --generator synth: train a generator "
             "network against a working student and keep the teacher's labels of its samples (--budget queries). "
             "Rerun the same command to resume.", commands.cmd_generate)
    opt.add_teacher(p)
    p.add_argument("--generator", choices=["zsdb3", "synth"], default="zsdb3", help="which zero-shot generator runs")
    p.add_argument("--input-shape", type=opt.shape, metavar="C,H,W", help="teacher input shape (default: the model's)")
    opt.add_zero_shot(p, flag=False)
    opt.add_labeling(p)
    opt.add_job(p)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "distill", "the front door: plan the queries, label, train a timm student, write it with its card",
             "Distil --student from a label-only --teacher on --data (or --zero-shot) within --budget queries.\n"
             "Prints the plan first; --dry-run stops there. Rerun the same command to resume.", commands.cmd_distill)
    opt.add_distill(p)


def _add_push_serve(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "push", "upload a saved student folder (with its model card) to a Hugging Face Hub model repo",
             "Create ORG/NAME if needed and upload FOLDER (config.json, model.safetensors, README.md, db3.json).",
             commands.cmd_push)
    p.add_argument("folder", type=_existing_dir, metavar="FOLDER", help="a student folder (db3 distill's OUT/model)")
    p.add_argument("--repo", required=True, type=_repo_id, metavar="ORG/NAME", help="Hub model repo id")
    p.add_argument("--private", action="store_true", help="create the repo private (if it does not exist yet)")
    p.add_argument("--token-env", metavar="VAR", help="read the Hub write token from environment variable VAR "
                                                      "(default: HF_TOKEN or the stored login)")
    p.add_argument("--message", metavar="TEXT", help="commit message (default names the architecture and teacher)")

    p = _sub(sub, "serve", "serve a timm model as a label-only HTTP endpoint (Open Inference Protocol v2)",
             "Answer only argmax labels at POST /v2/models/NAME/infer; query it with LabelOracle.from_url.",
             commands.cmd_serve)
    p.add_argument("--model", required=True, type=opt.model_spec("model"), metavar="MODEL",
                   help="timm model name, local-dir:PATH or hf-hub:ORG/NAME")
    p.add_argument("--checkpoint", type=opt.existing_file, metavar="FILE", help="model weights (.safetensors/.pt)")
    p.add_argument("--num-classes", type=opt.int_at_least(2), metavar="N")
    p.add_argument("--name", metavar="NAME", help="model name in the URL (default: the last part of --model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=opt.port, default=8000)
    p.add_argument("--token-env", metavar="VAR", help="require the bearer token held in environment variable VAR")
    p.add_argument("--max-batch-size", type=opt.int_at_least(1), default=1024, metavar="N")
    p.add_argument("--quota", type=opt.int_at_least(1), metavar="Q", help="queries per client per --quota-window")
    p.add_argument("--quota-window", type=opt.number(0, low_open=True), default=60.0, metavar="S", help="seconds")
    p.add_argument("--device", default=None, help="model device (default: cpu)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``db3`` argument parser."""
    parser = argparse.ArgumentParser(prog="db3", formatter_class=opt.Formatter,
                                     description="Distil a timm student from a teacher that answers only class labels.")
    parser.add_argument("--version", action="version", version=f"db3-timm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = _sub(sub, "list", "list registered models, labelers or generators", "List what is registered.", commands.cmd_list)
    p.add_argument("kind", choices=["models", "labelers", "generators"])
    p.add_argument("filter", nargs="?", default="", help="fnmatch filter, e.g. '*bd'")
    p = _sub(sub, "demo", "the end-to-end demo on scikit-learn digits (a few minutes on CPU)",
             "Train a digits teacher, hide it behind a label-only oracle and distil students.", commands.cmd_demo)
    p.add_argument("--out", default=".demo", help="folder for the teacher, students, figures and results")
    p.add_argument("--seed", type=opt.int_at_least(0), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_distill(sub)
    _add_label(sub)
    _add_generate(sub)
    _add_push_serve(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (a scheduler's kill) becomes an exception, so half-done work records what it spent and exits cleanly.
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the ``db3`` command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["distill"]:
        args = opt.parse_with_config(parser._subparsers._group_actions[0].choices["distill"], argv[1:], section="distill")
        args.command = "distill"
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # a known error of the library: one line, not a traceback
        from .._io import ConfigMismatchError, RunLockedError
        from ..oracle import QueryBudgetExceeded

        if isinstance(err, QueryBudgetExceeded):
            print(f"db3 {args.command}: {err}. Finished work is kept in the output folder; rerun the same command "
                  f"with a larger --budget to resume.", file=sys.stderr)
            return 3
        if isinstance(err, (ConfigMismatchError, RunLockedError)):  # the output folder's state; the message says why
            print(f"db3 {args.command}: {err}", file=sys.stderr)
            return 1
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
            print(f"db3 {args.command}: {err.strerror or err}", file=sys.stderr)
            return 1
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if args.command in ("label", "generate", "distill"):  # the commands that run under `accelerate launch`
            from .._distributed import end_processes

            end_processes()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
