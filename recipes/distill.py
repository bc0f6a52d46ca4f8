#!/usr/bin/env python
"""DB3KD with Accelerate: distil a label-only (decision-based) teacher into a timm student.

The teacher only ever answers class labels (``LabelOracle.from_timm``). The transfer set is a
``db3 label`` / ``label_dataset`` output folder when ``--transfer-dir`` holds one, else the training
images soft-labelled on the fly with ``--labeler`` (resumable, split across processes); ``--zero-shot``
grows pseudo samples with the registered ``zsdb3`` generator instead. The student trains on
``CE(teacher label) + T^2 KL(softmax(z/T))`` (``DB3DistillationTask``), is evaluated on the real test
split, and the report gives both the final model's accuracy and that of the epoch picked on the
held-out validation split.

    python recipes/distill.py --config recipes/configs/digits_lenet5.yaml
    accelerate launch recipes/distill.py --config recipes/configs/cifar10_alexnet_half.yaml --mixed-precision bf16
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/distill.py --config ...
    python recipes/distill.py --config ... --resume            # continue from OUTPUT_DIR/checkpoints
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from accelerate.utils import set_seed

import db3_timm
from db3_timm import train_utils as tu
from db3_timm.data import load_image_dataset
from db3_timm.distill import DB3DistillationTask
from db3_timm.oracle import LabelOracle


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_training_args(p)
    tu.add_data_args(p)
    g = p.add_argument_group("teacher and student")
    g.add_argument("--teacher", metavar="MODEL", help="label-only teacher: local-dir:PATH, hf-hub:ORG/NAME or a timm name")
    g.add_argument("--teacher-checkpoint", metavar="FILE", help="teacher weights (.safetensors/.pt) for a timm name")
    g.add_argument("--eval-teacher", action=argparse.BooleanOptionalAction, default=True,
                   help="report the teacher's test accuracy (costs one label query per test image)")
    g.add_argument("--student", metavar="MODEL", help="timm student architecture, e.g. lenet5_half, resnet18")
    g.add_argument("--student-pretrained", action="store_true", help="start from the student's pretrained weights")
    g.add_argument("--temperature", type=float, default=20.0, help="KD temperature T (DB3KD: 20)")
    g.add_argument("--ce-weight", type=float, default=1.0, help="weight of CE on the teacher's labels")
    g.add_argument("--kd-weight", type=float, default=1.0, help="weight of the T^2-scaled KL to the soft labels")
    tu.add_transfer_args(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = tu.parse_args_with_config(parser, argv, section="distill")
    tu.require_args(parser, args, "teacher", "student", "data", "output_dir")
    if args.zero_shot and not db3_timm.is_generator("zsdb3"):
        parser.exit(2, f"{parser.prog}: error: --zero-shot needs the ZSDB3KD pseudo-sample generator 'zsdb3', which is "
                       f"not installed (registered generators: {', '.join(db3_timm.list_generators()) or 'none'}). "
                       f"Install a package that registers it (entry-point group 'db3_timm.generators'), or drop "
                       f"--zero-shot to distil from the training images of --data.\n")
    try:
        accelerator = tu.make_accelerator(args)
    except tu.DistributedSetupError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")

    oracle = LabelOracle.from_timm(args.teacher, args.teacher_checkpoint, device=accelerator.device, budget=args.budget)
    size = args.image_size or (oracle.input_size[1] if oracle.input_size and oracle.input_size[1] == oracle.input_size[2] else None)
    transfer = tu.prepare_transfer_set(accelerator, oracle, args, image_size=size)
    test = load_image_dataset(args.data, args.test_split, image_size=size, limit=args.test_limit)
    report = {"recipe": "distill", "data": args.data, "teacher": args.teacher, "student": args.student, **transfer.info}
    if args.eval_teacher and accelerator.is_main_process:
        before = oracle.queries
        report["teacher_test_acc"] = float((oracle(test.images) == test.labels).float().mean())
        accelerator.print(f"teacher test accuracy {report['teacher_test_acc']:.2%} ({oracle.queries - before} label queries)")

    set_seed(args.seed)  # the student's initialisation does not depend on how the transfer set was made
    import timm

    student = timm.create_model(args.student, pretrained=args.student_pretrained,
                                num_classes=oracle.num_classes, in_chans=transfer.image_shape[0])
    tu.check_model_input(student, transfer.image_shape, oracle.num_classes, what="student")
    task = DB3DistillationTask(student, temperature=args.temperature,
                               task_loss_weight=args.ce_weight, distill_loss_weight=args.kd_weight)
    tu.train_and_evaluate(accelerator, args, task=task, model=student, train_set=transfer.train, val_set=transfer.val,
                          test_set=tu.TensorDictDataset(test.images, test.labels), image_shape=transfer.image_shape,
                          project_name="db3-distill", report=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
