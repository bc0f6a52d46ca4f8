#!/usr/bin/env python
"""Train a teacher with Accelerate: any timm model on any ``load_image_dataset`` spec.

The model is written with ``timm.models.save_for_hf`` to ``OUTPUT_DIR/model`` (the epoch with the best held-out
validation accuracy), so ``LabelOracle.from_timm("local-dir:OUTPUT_DIR/model")`` -- or ``db3 distill --teacher
local-dir:OUTPUT_DIR/model`` -- serves it as a label-only teacher.

    python recipes/train_teacher.py --config recipes/configs/digits_lenet5.yaml
    accelerate launch recipes/train_teacher.py --config recipes/configs/cifar10_alexnet_half.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import timm
import torch.nn as nn
from accelerate.utils import set_seed
from timm.task import ClassificationTask

import db3_timm
from db3_timm.cli import options as opt
from db3_timm.data import load_image_dataset
from db3_timm.pipeline import holdout_split
from db3_timm.training import TensorDictDataset, make_accelerator, test_accuracy, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=opt.Formatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (recipes/configs/*.yaml); flags override it")
    p.add_argument("--model", metavar="NAME", help="timm architecture, e.g. lenet5, alexnet_cifar, resnet34")
    p.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights (Hub or cache)")
    p.add_argument("--output-dir", "--out", dest="out", metavar="DIR", help="where model/, checkpoints and results go")
    opt.add_data(p)
    opt.add_training(p)
    opt.add_accelerate(p)
    p.set_defaults(ce_weight=1.0, kd_weight=0.0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = opt.parse_with_config(parser, argv, section="train_teacher")
    opt.require(parser, args, "model", "data", "out")
    try:
        accelerator = make_accelerator(args.out, seed=args.seed, mixed_precision=args.mixed_precision,
                                       gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    except db3_timm.DistributedSetupError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    size = args.image_size
    if size is None:  # the architecture's own input size, e.g. 28 for lenet5 on 8x8 digits
        _, h, w = timm.models.get_pretrained_cfg_value(args.model, "input_size") or (None, None, None)
        size = h if h is not None and h == w else None
    data = load_image_dataset(args.data, args.train_split, image_size=size, limit=args.limit)
    test = load_image_dataset(args.data, args.test_split, image_size=size, limit=args.test_limit)
    keep, held = holdout_split(len(data), 0.1 if args.val_fraction is None else args.val_fraction, args.seed)
    train_set = TensorDictDataset(data.images[keep], data.labels[keep])
    val_set = TensorDictDataset(data.images[held], data.labels[held]) if len(held) else None

    set_seed(args.seed)
    model = db3_timm.create_image_model(args.model, data.num_classes, data.image_shape, pretrained=args.pretrained)
    task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False)
    best = {}

    def on_best(epoch: int) -> None:  # keep the best epoch's weights as the teacher
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            timm.models.save_for_hf(accelerator.unwrap_model(model), args.out + "/model", safe_serialization=True)
        best["epoch"] = epoch

    result = train(accelerator, task, model, train_set, opt.train_config(args), output_dir=args.out, val_set=val_set,
                   resume="latest", on_best=on_best, progress_bar=not args.no_progress)
    if not best:  # no validation split: the last epoch is the teacher
        on_best(len(result.history))
    accelerator.unwrap_model(model).load_state_dict(db3_timm.load_checkpoint_state_dict(args.out + "/model/model.safetensors"))
    acc = test_accuracy(accelerator, model, test.images, test.labels, args.eval_batch_size)
    if accelerator.is_main_process:
        report = {"recipe": "train_teacher", "model": args.model, "data": args.data, "test_acc": acc,
                  "best_epoch": best.get("epoch"), "history": result.history, "classes": data.class_names}
        with open(args.out + "/results.json", "w") as fh:
            json.dump(report, fh, indent=2)
    accelerator.print(f"teacher {args.model}: test accuracy {acc:.2%} (epoch {best.get('epoch')}) -> {args.out}/model")
    accelerator.end_training()  # tears the process group down before exit (gloo threads abort otherwise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
