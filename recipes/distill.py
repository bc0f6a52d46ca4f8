#!/usr/bin/env python
"""Distil a timm student from a label-only teacher with Accelerate (what ``db3 distill`` runs, as a script).

The teacher only ever answers class labels. The images of ``--data`` (or, with ``--zero-shot``, samples asked
without images: noise, a generator's or ZSDB3KD's, as the plan says) are labelled, and with ``--plan paper`` /
``db3`` soft-labelled by ``--labeler``, into a resumable transfer set; the student trains on
``CE(teacher label) + T^2 KL(softmax(z / T))`` (``DB3DistillationTask``), picks its best epoch on held-out images,
is scored on the test split and saved with its model card to ``OUTPUT_DIR/model`` (``db3 push`` uploads it).

    python recipes/distill.py --config recipes/configs/digits_lenet5.yaml
    accelerate launch --mixed_precision bf16 recipes/distill.py --config recipes/configs/cifar10_alexnet_half.yaml
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/distill.py --config ...

Rerun the same command to resume: labelling, generation and training continue where they stopped.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import db3_timm
from db3_timm.cli import options as opt
from db3_timm.data import load_image_dataset
from db3_timm.training import make_accelerator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=opt.Formatter)
    opt.add_distill(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = opt.parse_with_config(parser, argv, section="distill")
    opt.require(parser, args, "teacher", "student", "data", "out")
    try:
        accelerator = make_accelerator(args.out, seed=args.seed, mixed_precision=args.mixed_precision,
                                       gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    except db3_timm.DistributedSetupError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    oracle = db3_timm.LabelOracle.from_timm(args.teacher, args.teacher_checkpoint, num_classes=args.num_classes,
                                            device=accelerator.device, budget=args.budget, quantize=args.quantize,
                                            precision=args.precision, channels_last=args.channels_last)
    size = args.image_size or (oracle.input_size[1] if oracle.input_size[1] == oracle.input_size[2] else None)
    own_images = not (args.zero_shot or args.transfer_dir)
    train = load_image_dataset(args.data, args.train_split, image_size=size, limit=args.limit) if own_images else None
    test = load_image_dataset(args.data, args.test_split, image_size=size, limit=args.test_limit)
    prior = None if args.prior is None else db3_timm.create_timm_model(
        args.prior, args.prior_checkpoint, num_classes=oracle.num_classes, device=accelerator.device)
    training = opt.train_config(args, opt.grows_without_images(args))  # zero-shot runs train longer
    config = db3_timm.DistillConfig(plan=args.plan, labeling=opt.labeling_config(args), zero_shot=opt.zero_shot_config(args),
                                    train=training, val_fraction=args.val_fraction,
                                    evaluate_teacher=args.eval_teacher, student_pretrained=args.student_pretrained)
    try:  # a plan over budget is refused here, in one line, before any query
        plan = db3_timm.plan_queries(oracle, None if train is None else len(train), config, test_images=len(test),
                                     budget=args.budget, seed=args.seed, transfer_dir=args.transfer_dir,
                                     with_labels=train is not None, prior=prior)
    except db3_timm.BudgetTooSmallError as err:
        parser.exit(2, f"{parser.prog}: error: argument --budget: {err}\n")
    accelerator.print(f"plan:\n{plan.describe()}")
    if args.dry_run:
        accelerator.end_training()
        return 0
    try:
        result = db3_timm.distill_student(
            oracle, args.student, None if train is None else train.images, args.budget, args.out, args.seed,
            labels=None if train is None else train.labels, test=(test.images, test.labels),
            class_names=test.class_names, dataset=args.data, config=config, transfer_dir=args.transfer_dir, prior=prior,
            accelerator=accelerator, progress=not args.no_progress)
    except (db3_timm.ConfigMismatchError, db3_timm.RunLockedError) as err:  # the output folder's state
        parser.exit(1, f"{parser.prog}: error: argument --output-dir: {err}\n")
    accelerator.print(f"student test accuracy {result.test_accuracy:.2%} ({result.queries['total']:,} teacher queries) "
                      f"-> {result.out_dir / 'model'}")
    accelerator.end_training()  # tears the process group down before exit (gloo threads abort otherwise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
