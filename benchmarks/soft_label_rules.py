"""Which distance -> soft-label rule and temperature make the best students? Side by side, one run.

SD and MBD (@100 queries/target) soft labels for 500 real Fashion-MNIST training images of the
LeNet-5 teacher are computed once; LeNet-5-half students are trained (60 epochs, seed 0) with each
rule x temperature, next to white-box KD on the teacher's logits, and scored on the test set.

    python benchmarks/soft_label_rules.py
"""
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmnist_teacher, machine_info  # noqa: E402
from db3_timm import LabelOracle, create_labeler, distances_to_logits  # noqa: E402
from db3_timm.data import load_image_dataset  # noqa: E402
from db3_timm._preprocess import PixelTransform  # noqa: E402
from db3_timm.training import evaluate, fit  # noqa: E402


def main() -> None:
    print(machine_info(), flush=True)
    teacher, acc = fmnist_teacher(verbose=False)
    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:500]
    x = train.images[idx]
    o = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    t = time.time()
    res = {n: create_labeler(n, o, **({} if n == 'sd' else {'queries_per_target': 100})).label(x, (x, train.labels[idx]))
           for n in ('sd', 'mbd')}
    print(f"teacher test accuracy {acc:.4f}; soft labels for 500 images in {time.time() - t:.0f}s", flush=True)
    with torch.inference_mode():
        wl = teacher(PixelTransform.for_model(teacher, resize_to_model="never")(x)).clone()

    def run(name, labels, logits, **kw):
        m = timm.create_model("lenet5_half", num_classes=10)
        fit(m, x, labels, logits, epochs=60, lr=2e-3, seed=0, **kw)
        print(f"{name:45s} {evaluate(m, test.images, test.labels):.4f}", flush=True)

    y = res['mbd'].labels
    for T in (20, 4):
        run(f"whitebox T={T}", y, wl, temperature=T)
    for n in ('sd', 'mbd'):
        d = res[n].distances
        for rule in ('reciprocal', 'neg_distance'):
            z = distances_to_logits(d, y, rule)
            for T in (20, 4, 1):
                run(f"{n} {rule} T={T}", y, z, temperature=T)


if __name__ == "__main__":
    main()
