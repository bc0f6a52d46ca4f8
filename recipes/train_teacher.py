#!/usr/bin/env python
"""Train a teacher with Accelerate: any timm model on any ``load_image_dataset`` spec.

The final model is written with ``timm.models.save_for_hf`` to ``OUTPUT_DIR/model`` (and the epoch
with the best held-out validation accuracy to ``OUTPUT_DIR/model_best``), so
``LabelOracle.from_timm("local-dir:OUTPUT_DIR/model")`` -- or ``recipes/distill.py --teacher
local-dir:OUTPUT_DIR/model`` -- serves it as a label-only teacher.

    python recipes/train_teacher.py --config recipes/configs/digits_lenet5.yaml
    accelerate launch recipes/train_teacher.py --config recipes/configs/cifar10_alexnet_half.yaml
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch.nn as nn
from accelerate.utils import set_seed

import db3_timm  # noqa: F401  (registers the paper's architectures with timm)
from db3_timm import train_utils as tu
from db3_timm.data import load_image_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_training_args(p)
    tu.add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="timm architecture, e.g. lenet5, alexnet_cifar, resnet34")
    g.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (Hub or cache)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import timm
    from timm.task import ClassificationTask

    parser = build_parser()
    args = tu.parse_args_with_config(parser, argv, section="train_teacher")
    tu.require_args(parser, args, "model", "data", "output_dir")
    try:
        accelerator = tu.make_accelerator(args)
    except tu.DistributedSetupError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")

    size = args.image_size
    if size is None:  # the architecture's own input size, e.g. 28 for lenet5 on 8x8 digits
        c, h, w = timm.models.get_pretrained_cfg_value(args.model, "input_size") or (None, None, None)
        size = h if h is not None and h == w else None
    train = load_image_dataset(args.data, args.train_split, image_size=size, limit=args.limit)
    test = load_image_dataset(args.data, args.test_split, image_size=size, limit=args.test_limit)
    if args.val_split:
        val, val_info = load_image_dataset(args.data, args.val_split, image_size=size), f"{args.data} split {args.val_split!r}"
    else:
        keep, held = tu.holdout_split(len(train), args.val_fraction, args.seed)
        val = train.subset(held) if len(held) else None
        val_info = f"{len(held)} held-out images of {args.data} split {args.train_split!r} (seed {args.seed})"
        train = train.subset(keep)

    set_seed(args.seed)
    model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=train.num_classes,
                              in_chans=train.image_shape[0])
    tu.check_model_input(model, train.image_shape, train.num_classes, what="teacher")
    task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False)
    report = {"recipe": "train_teacher", "data": args.data, "model": args.model, "classes": train.class_names,
              "validation": {"source": val_info if val is not None else None, "labels": "dataset"}}
    tu.train_and_evaluate(accelerator, args, task=task, model=model, train_set=tu.TensorDictDataset(train.images, train.labels),
                          val_set=tu.TensorDictDataset(val.images, val.labels) if val is not None else None,
                          test_set=tu.TensorDictDataset(test.images, test.labels), image_shape=train.image_shape,
                          project_name="db3-train-teacher", report=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
