"""The ``db3`` subcommands: parse, call the library, print what happened. The work lives in the library."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Tuple

from . import options as opt

__all__ = ["cmd_list", "cmd_demo", "cmd_label", "cmd_generate", "cmd_distill", "cmd_push", "cmd_serve"]


# ---------------------------------------------------------------------- shared steps
def _teacher(args: argparse.Namespace, device: Any = None) -> Any:
    """The label-only oracle of ``--teacher`` (an argparse error naming the model when it cannot be loaded)."""
    import torch

    from ..oracle import LabelOracle

    device = device or args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return LabelOracle.from_timm(args.teacher, args.teacher_checkpoint, num_classes=args.num_classes, device=device,
                                     budget=args.budget, quantize=args.quantize, precision=args.precision,
                                     channels_last=args.channels_last)
    except (OSError, ValueError, RuntimeError) as err:
        args.parser_error(f"argument --teacher: cannot load {args.teacher!r}: {err}")


def _image_size(args: argparse.Namespace, oracle: Any) -> Optional[int]:
    size = args.image_size
    if size is None and oracle.input_size is not None and oracle.input_size[1] == oracle.input_size[2]:
        size = oracle.input_size[1]  # store what the teacher sees, so students train on the same pixels
    return size


def _data(args: argparse.Namespace, oracle: Any, split: str, limit: Optional[int], *, stream: bool = False) -> Any:
    """Loads ``--data`` split ``split`` at the teacher's size (an ``ImageStream`` read slice by slice with
    ``stream``), checking its channels and classes (argparse errors name the problem)."""
    from ..data import load_image_dataset, open_image_dataset

    try:
        data = (open_image_dataset if stream else load_image_dataset)(
            args.data, split, image_size=_image_size(args, oracle), limit=limit)
    except (OSError, ValueError, ImportError) as err:
        args.parser_error(f"argument --data: cannot load {args.data!r} (split {split!r}): {err}")
    if oracle.input_size is not None and data.image_shape[0] != oracle.input_size[0]:
        args.parser_error(f"argument --data: {args.data!r} has {data.image_shape[0]} channel(s) but teacher "
                          f"{args.teacher!r} expects {oracle.input_size[0]}")
    if oracle.num_classes is not None and data.num_classes > oracle.num_classes:
        args.parser_error(f"argument --data: {args.data!r} has {data.num_classes} classes but the teacher answers "
                          f"{oracle.num_classes}")
    return data


def _labeling(args: argparse.Namespace, oracle: Any) -> Tuple[Any, Any]:
    """The checked labeling settings and the loaded prior (argparse errors before any query)."""
    prior = None
    if args.prior is not None:
        from ..oracle import create_timm_model

        try:
            prior = create_timm_model(args.prior, args.prior_checkpoint, num_classes=oracle.num_classes, device=oracle.device)
        except (OSError, ValueError, RuntimeError) as err:
            args.parser_error(f"argument --prior: cannot load {args.prior!r}: {err}")
    try:
        labeling = opt.labeling_config(args)
        labeling.build(oracle, args.seed, **({"prior": prior} if prior is not None else {}))
    except (TypeError, ValueError) as err:
        shown = {"seed": args.seed, **(args.labeler_kwargs or {})}
        if args.queries_per_target is not None:
            shown["queries_per_target"] = args.queries_per_target
        if getattr(args, "targets", None) is not None:
            shown["targets"] = args.targets
        if args.prior is not None:
            shown["prior"] = args.prior
        args.parser_error(f"argument --labeler: cannot build {args.labeler!r} with {shown}: {err}")
    return labeling, prior


def _zero_shot(args: argparse.Namespace, oracle: Any) -> Any:
    try:
        zs = opt.zero_shot_config(args)
        zs.build(oracle, args.seed)
    except (TypeError, ValueError) as err:
        args.parser_error(f"zero-shot settings: {err}")
    return zs


def _queries_line(queries: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in queries.items() if k != "total") + f" = {queries['total']:,} total"


# ---------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    """``db3 list models|labelers|generators [FILTER]``."""
    import timm

    from .. import list_generators, list_labelers

    if args.kind == "models":
        for name in timm.list_models(args.filter or "*", module=["lenet", "alexnet_cifar"]):
            model = timm.create_model(name)
            params = sum(p.numel() for p in model.parameters())
            print(f"{name:24s} {params:>10,d} params  input {model.pretrained_cfg['input_size']}")
    else:
        for name in (list_labelers if args.kind == "labelers" else list_generators)(args.filter):
            print(name)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``db3 demo``: the digits demo."""
    from ..demo import run_demo

    run_demo(out_dir=args.out, seed=args.seed, device=args.device, progress=not args.no_progress)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """``db3 label``: soft-label a dataset into resumable shards of a standard Hugging Face dataset."""
    from .._distributed import process_state
    from ..sources.soft import references_per_class
    from ..transfer.label import ConfigMismatchError, label_dataset, read_manifest

    t0 = time.monotonic()
    state = process_state()  # one process per device under `accelerate launch`; label_dataset splits the shards
    import torch

    device = args.device or (state.device if state.device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    oracle = _teacher(args, device)
    data = _data(args, oracle, args.train_split, args.limit, stream=True)  # one shard's pixels in memory at a time
    labeling, prior = _labeling(args, oracle)
    labeler = labeling.build(oracle, args.seed, **({"prior": prior} if prior is not None else {}))
    refs = ref_labels = None
    if args.references_per_class > 0:
        idx = references_per_class(data.labels, data.num_classes, args.references_per_class)
        refs, ref_labels = data.take(idx), data.labels[idx]
    if _label_plan(args, oracle, labeler, len(data), 0 if refs is None else len(refs), data.read(0, 256), state):
        return 0
    # The label column holds the teacher's answers: the data's class names fit only a teacher with its classes.
    names = data.class_names if data.num_classes == labeler.num_classes else None
    try:
        dataset = label_dataset(labeler, data, args.out, references=refs, dataset_labels=ref_labels,
                                shard_size=args.shard_size, seed=args.seed, accelerator=state,
                                progress=not args.no_progress, class_names=names)
    except ConfigMismatchError as err:
        args.parser_error(f"argument --out: {err}")
    if state.is_main_process:
        q = read_manifest(args.out)["queries"]
        n = len(dataset)
        print(f"labelled {n} images with {args.labeler!r} -> {args.out} (open with datasets.load_from_disk)")
        print(f"queries: {q['total']:,} total = {q['reference_check']:,} reference check + {q['shards']:,} images"
              + (f" + {q['aborted']:,} aborted" if q["aborted"] else "") + f"; {q['total'] / n:,.1f} per image")
        if oracle.remaining is not None:
            print(f"budget: {oracle.remaining:,} of {oracle.budget:,} queries left (this process)")
        print(f"wall time: {time.monotonic() - t0:.1f} s")
    return 0


def _label_plan(args: argparse.Namespace, oracle: Any, labeler: Any, n: int, refs: int, images: Any, state: Any) -> bool:
    """Prints what ``db3 label`` will spend at most; refuses a plan over ``--budget``; returns whether to stop
    (``--dry-run``)."""
    from ..pipeline import measure_throughput
    from ..transfer.plan import Plan, PlanStep

    steps = [PlanStep("reference check", refs, "the teacher's labels of the reference images"),
             PlanStep("labels", n, "one label query per image")]
    if labeler.uses_queries:
        steps.append(PlanStep(labeler.name, n * labeler.queries_per_image(refs > 0), labeler.describe_cost(refs > 0)))
    plan = Plan("label", steps, args.budget)
    rate = measure_throughput(oracle, images) if args.dry_run else None
    if state.is_main_process:
        print(f"plan for {n:,} images:\n{plan.describe(rate)}")
    if args.budget is not None and plan.total > args.budget:
        args.parser_error(f"argument --budget: labelling {n:,} images can spend up to {plan.total:,} queries; the budget "
                          f"is {args.budget:,} (raise it, or label fewer images with --limit)")
    if args.dry_run and state.is_main_process:
        print(f"dry run: nothing else was asked (the throughput probe spent {oracle.queries:,} queries)")
    return bool(args.dry_run)


def _generate_synth(args: argparse.Namespace, oracle: Any, zs: Any) -> int:
    """``db3 generate --generator synth``: the teacher's labels of a generator network's samples, as a transfer set."""
    from .._io import write_json_atomic
    from ..transfer.build import ConfigMismatchError, build_transfer_set
    from ..transfer.plan import BudgetTooSmallError, make_plan

    t0 = time.monotonic()
    try:
        plan = make_plan("synth", oracle, None, budget=args.budget, zero_shot=zs)
        print(f"plan:\n{plan.describe()}")
        transfer = build_transfer_set(oracle, plan, args.out, seed=args.seed, progress=not args.no_progress)
    except BudgetTooSmallError as err:
        args.parser_error(f"argument --budget: {err}")
    except ConfigMismatchError as err:
        args.parser_error(f"argument --out: {err}")
    missing = transfer.info.get("missing_classes") or []
    summary = {"generator": "synth", "rows": len(transfer.rows), "missing_classes": missing,
               "queries": transfer.queries, "wall_s": round(time.monotonic() - t0, 1)}
    write_json_atomic(Path(args.out) / "summary.json", summary)
    print(f"transfer set of {len(transfer.rows):,} rows -> {args.out} (missing classes: {', '.join(missing) or 'none'})")
    print(f"queries: {_queries_line(transfer.queries)}")
    print(f"figures: {Path(args.out) / 'synth' / 'grids'}; wall time {summary['wall_s']:.1f} s")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``db3 generate``: grow a zero-shot transfer set from noise."""
    import json

    from .._io import write_json_atomic
    from ..transfer.build import ConfigMismatchError, generate_zero_shot
    from ..transfer.plan import BudgetTooSmallError

    oracle = _teacher(args)
    if args.input_shape is not None:
        if oracle.input_size is not None and tuple(args.input_shape)[0] != oracle.input_size[0]:
            args.parser_error(f"argument --input-shape: {','.join(map(str, args.input_shape))} has "
                              f"{args.input_shape[0]} channel(s) but the teacher takes {oracle.input_size[0]}")
        oracle.input_size = tuple(args.input_shape)
    zs = _zero_shot(args, oracle)
    if args.generator == "synth":
        return _generate_synth(args, oracle, zs)
    if args.queries_per_target is None and args.labeler != "sd":
        args.queries_per_target = 200  # the pseudo samples' own default: 200 queries per other class
    labeling, _ = _labeling(args, oracle)
    t0 = time.monotonic()
    try:
        transfer = generate_zero_shot(oracle, args.out, zs, labeling, budget=args.budget, seed=args.seed,
                                      progress=not args.no_progress)
    except BudgetTooSmallError as err:
        args.parser_error(f"argument --budget: {err}")
    except ConfigMismatchError as err:
        args.parser_error(f"argument --out: {err}")
    gen = json.loads((Path(args.out) / "generation.json").read_text())
    sources = {}
    for src in transfer.rows["source"]:
        sources[src] = sources.get(src, 0) + 1
    summary = {"generator": gen["generator"], "rows": len(transfer.rows), "rows_by_source": sources,
               "missing_classes": gen["missing_classes"], "queries": transfer.queries,
               "mean_robustness": gen["mean_robustness"], "wall_s": round(time.monotonic() - t0, 1)}
    write_json_atomic(Path(args.out) / "summary.json", summary)
    parts = ", ".join(f"{n:,} {src}" for src, n in sources.items())
    print(f"transfer set of {len(transfer.rows):,} rows ({parts}) -> {args.out} "
          f"(missing classes: {gen['missing_classes'] or 'none'})")
    print(f"queries: {_queries_line(transfer.queries)}")
    rob = gen["mean_robustness"]
    if rob:
        print(f"mean distance to the nearest boundary: {rob[0]:.3f} (iteration 1) -> {rob[-1]:.3f} (iteration {len(rob)})")
    print(f"figures: {Path(args.out) / 'grids'}, {Path(args.out) / 'robustness.png'}; wall time {time.monotonic() - t0:.1f} s")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """``db3 distill``: plan, label, train and write a student with its card."""
    from ..pipeline import DistillConfig, distill_student, measure_throughput, plan_queries
    from ..transfer.build import ConfigMismatchError
    from ..transfer.plan import BudgetTooSmallError

    opt.require(args.parser, args, "teacher", "student", "out")
    own_images = not (args.zero_shot or args.transfer_dir)
    if own_images:
        opt.require(args.parser, args, "data")
    oracle = _teacher(args)
    train = _data(args, oracle, args.train_split, args.limit) if own_images else None
    test = _data(args, oracle, args.test_split, args.test_limit) if args.data else None
    labeling, prior = _labeling(args, oracle)
    try:
        training = opt.train_config(args, opt.grows_without_images(args))
        cfg = DistillConfig(plan=args.plan, labeling=labeling, zero_shot=_zero_shot(args, oracle), train=training,
                            val_fraction=args.val_fraction, evaluate_teacher=args.eval_teacher,
                            student_pretrained=args.student_pretrained, mixed_precision=args.mixed_precision,
                            gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
        plan = plan_queries(oracle, None if train is None else len(train), cfg, test_images=0 if test is None else len(test),
                            budget=args.budget, seed=args.seed, transfer_dir=args.transfer_dir, with_labels=train is not None,
                            prior=prior)
    except BudgetTooSmallError as err:
        args.parser_error(f"argument --budget: {err}")
    except (TypeError, ValueError) as err:
        args.parser_error(str(err))
    rate = measure_throughput(oracle, None if train is None else train.images) if args.dry_run else None
    what = f"{len(train):,} images" if train is not None else (args.transfer_dir or "zero-shot")
    print(f"plan {plan.name!r} for {args.student} from {args.teacher} ({what}):")
    print(plan.describe(rate))
    if args.dry_run:
        print(f"dry run: nothing else was asked (the throughput probe spent {oracle.queries:,} queries)")
        return 0 if plan.budget is None or plan.total <= plan.budget else 2
    try:
        result = distill_student(
            oracle, args.student, None if train is None else train.images, args.budget, args.out, args.seed,
            labels=None if train is None else train.labels, test=None if test is None else (test.images, test.labels),
            class_names=next((d.class_names for d in (train, test) if d is not None), None),
            dataset=args.data or "zero-shot", config=cfg, transfer_dir=args.transfer_dir, progress=not args.no_progress,
            prior=prior)
    except BudgetTooSmallError as err:
        args.parser_error(f"argument --budget: {err}")
    except ConfigMismatchError as err:
        args.parser_error(f"argument --out: {err}")
    print(f"queries: {_queries_line(result.queries)}")
    if result.test_accuracy is not None:
        teacher = "" if result.teacher_accuracy is None else f" (teacher {result.teacher_accuracy:.2%})"
        print(f"student test accuracy: {result.test_accuracy:.2%}{teacher}")
    print(f"student -> {result.out_dir / 'model'}; push it with: db3 push {result.out_dir / 'model'} --repo ORG/NAME")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``db3 push FOLDER --repo ORG/NAME``."""
    from ..hub import push_student
    from ..oracle import HubUnavailableError

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


def _token_from_env(args: argparse.Namespace) -> Optional[str]:
    if args.token_env is None:
        return None
    token = os.environ.get(args.token_env) or None
    if token is None:  # name the variable, never its value
        args.parser_error(f"argument --token-env: environment variable {args.token_env!r} is not set or empty")
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    """``db3 serve``: a label-only HTTP endpoint for a timm model."""
    try:
        import uvicorn

        from ..serve import create_app_from_timm
    except ImportError as err:
        args.parser_error(f"db3 serve needs the 'serve' extra (pip install 'db3-timm[serve]'): {err}")
    token = _token_from_env(args)
    try:
        app = create_app_from_timm(args.model, args.checkpoint, num_classes=args.num_classes, device=args.device,
                                   model_name=args.name, token=token, max_batch_size=args.max_batch_size,
                                   quota=args.quota, quota_window=args.quota_window)
    except (OSError, ValueError, RuntimeError) as err:
        args.parser_error(f"argument --model: cannot load {args.model!r}: {err}")
    print(f"serving {args.model!r} label-only (Open Inference Protocol v2) at "
          f"http://{args.host}:{args.port}/v2/models/{app.state.model_name}/infer "
          f"(auth: {'bearer token from $' + args.token_env if token else 'none'}"
          f"{f', quota {args.quota}/{args.quota_window:g}s' if args.quota else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
