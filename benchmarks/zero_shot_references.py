"""Reference points for the zero-shot frontier (``zero_shot_frontier.py``): Fashion-MNIST ``lenet5`` teacher,
``lenet5_half`` student, scored on the 10,000 real test images.

Two references, neither a product arm:

* ``real`` -- the ceiling of any query source: the first ``--images`` real training images, labelled by the
  teacher (one query each) and trained on with the frontier's recipe (1.5M samples seen, Adam 2e-3, cosine). A
  zero-shot source can at best ask questions this good.
* ``ideal`` -- IDEAL's released protocol (SonyResearch/IDEAL, ``ideal.py``; read for its facts, written here from
  scratch) run on this teacher. Each epoch a freshly initialised generator (weights ~ N(0, 0.02)) trains 30 Adam
  steps (lr 1e-3, betas 0.5 / 0.999) on fixed latents, so that the student assigns its 250 images to balanced
  targets under random views (4-px padded crop, mirror): cross-entropy plus 5 x mean(p log p). The lowest-loss
  batch joins the pool, and the student (SGD 0.01, momentum 0.9, weight decay 5e-4) takes one pass over the whole
  pool, each image randomly mirrored and labelled by the teacher. The released script asks the teacher again at
  every pass; here a repeated (image, mirror) input is answered from a cache, so ``queries`` counts distinct
  inputs (at most twice the pool) and ``calls`` what the released script would have sent. Reported: the loop's
  final student, its best epoch on the test images (what the released script reports), and a fresh student
  trained on every distinct answer with the frontier's recipe (what this product would deliver).
  ``--ngf`` is the generator's width: 64 in the release; 32 by default here (4x cheaper on a CPU).

Rows are appended to ``--out`` (JSON lines); ``--table`` prints mean ± sd over seeds.

    python benchmarks/zero_shot_references.py --mode real --seeds 0 1 2
    python benchmarks/zero_shot_references.py --mode ideal --epochs 100 --seeds 0 1 2
    python benchmarks/zero_shot_references.py --mode ideal --ngf 64 --epochs 200 --device cuda   # the release's scale
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import REPO_ROOT, fmnist_teacher, machine_info  # noqa: E402

BATCH, LATENT, CLASSES = 250, 256, 10


class IdealGenerator(nn.Module):
    """IDEAL's generator layout: linear to a 7x7 map, two (upsample, conv, BN, LeakyReLU) blocks, conv, sigmoid."""

    def __init__(self, ngf: int):
        super().__init__()
        self.l1 = nn.Linear(LATENT, ngf * 2 * 49)
        self.body = nn.Sequential(
            nn.BatchNorm2d(ngf * 2), nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf * 2, 3, padding=1, bias=False), nn.BatchNorm2d(ngf * 2), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf, 3, padding=1, bias=False), nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.l1(z).view(len(z), -1, 7, 7))

    def reset(self) -> None:
        """Fresh weights, as the release draws them before every epoch's generation."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


def random_view(x: torch.Tensor) -> torch.Tensor:
    """Returns a random 4-px padded crop of each image, mirrored with probability 1/2 (differentiable in ``x``).
    The draws come from the CPU generator whatever ``x``'s device, so a CUDA run draws the same views."""
    n, _, h, w = x.shape
    pad = F.pad(x, (4, 4, 4, 4))[:, 0]
    dy, dx = torch.randint(0, 9, (2, n)).to(x.device)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = torch.gather(pad, 1, (dy[:, None] + rows)[:, :, None].expand(n, h, w + 8))
    out = torch.gather(out, 2, (dx[:, None] + cols)[:, None, :].expand(n, h, w))[:, None]
    return torch.where((torch.rand(n) < 0.5).to(x.device)[:, None, None, None], out.flip(3), out)


def generate(gen: IdealGenerator, student: nn.Module, norm) -> torch.Tensor:
    """One epoch's generation: returns the lowest-loss batch of 250 images in [0, 1] (no teacher query)."""
    gen.reset()
    student.eval()
    opt = torch.optim.Adam(gen.parameters(), 1e-3, betas=(0.5, 0.999))
    device = next(gen.parameters()).device
    z, targets = torch.randn(BATCH, LATENT).to(device), torch.arange(CLASSES, device=device).repeat(BATCH // CLASSES)
    best, best_x = float("inf"), None
    for _ in range(30):
        opt.zero_grad()
        x = gen(z)
        logits = student(norm(random_view(x)))
        p = logits.softmax(1)
        loss = F.cross_entropy(logits, targets) + 5 * (p * p.clamp_min(1e-12).log()).mean()
        if loss.item() < best:
            best, best_x = loss.item(), x.detach().clone()
        loss.backward()
        opt.step()
    return best_x


def student_pass(student, opt, pool, answers, oracle, norm) -> None:
    """One pass over the pool, each image randomly mirrored; asks the teacher only about (image, mirror) inputs
    not answered before (``answers[i, mirrored]``, -1 when unknown, filled in place)."""
    student.train()
    for b in torch.randperm(len(pool)).split(BATCH):
        flip = torch.rand(len(b)) < 0.5  # CPU draws, as ``random_view``'s
        xb = torch.where(flip.to(pool.device)[:, None, None, None], pool[b].flip(3), pool[b])
        known = answers[b, flip.long()]
        new = known < 0
        if new.any():
            known[new] = oracle(xb[new.to(pool.device)]).long().cpu()
            answers[b[new], flip[new].long()] = known[new]
        opt.zero_grad()
        F.cross_entropy(student(norm(xb)), known.to(pool.device)).backward()
        opt.step()


def run_ideal(seed: int, epochs: int, ngf: int, device: str = "cpu") -> dict:
    """IDEAL's protocol for ``epochs`` epochs on ``device``; returns the row (loop student final / best, fresh
    student). The answer cache stays on the CPU; the pool, the generator and both students live on ``device``."""
    import timm

    from db3_timm import LabelOracle
    from db3_timm.data import load_image_dataset
    from db3_timm.training import evaluate

    torch.manual_seed(seed)
    teacher, teacher_acc = fmnist_teacher(verbose=False)
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192, device=device)
    test = load_image_dataset("fashion-mnist", "test")
    student = timm.create_model("lenet5_half", num_classes=CLASSES).to(device)
    cfg = timm.data.resolve_data_config({}, model=student)
    mean = torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1)
    norm = lambda x: (x - mean) / std  # noqa: E731
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = IdealGenerator(ngf).to(device)
    pool, answers = torch.empty(0, 1, 28, 28, device=device), torch.empty(0, 2, dtype=torch.long)
    calls, accs, t0 = 0, [], time.time()
    for epoch in range(epochs):
        pool = torch.cat([pool, generate(gen, student, norm)])
        answers = torch.cat([answers, torch.full((BATCH, 2), -1, dtype=torch.long)])
        student_pass(student, opt, pool, answers, oracle, norm)
        calls += len(pool)  # the release labels every pooled image again at every pass
        student.eval()
        accs.append(100 * evaluate(student, test.images, test.labels))
        if epoch % 10 == 9:
            print(f"[ideal s{seed}] epoch {epoch + 1}: {accs[-1]:.2f} % (best {max(accs):.2f}), "
                  f"{int((answers >= 0).sum())} queries, {time.time() - t0:.0f} s", flush=True)
    loop_s = time.time() - t0
    asked = (answers >= 0).nonzero()
    pool = pool.cpu()
    images = torch.where(asked[:, 1:2, None, None].bool(), pool[asked[:, 0]].flip(3), pool[asked[:, 0]])
    fresh_acc, fresh_s = fresh_student(images, answers[asked[:, 0], asked[:, 1]], seed, test, device)
    return {"mode": "ideal", "seed": seed, "epochs": epochs, "ngf": ngf, "pool": len(pool),
            "queries": int(len(asked)), "calls": calls, "loop_final": round(accs[-1], 2),
            "loop_best": round(max(accs), 2), "loop_best_epoch": accs.index(max(accs)) + 1,
            "accuracy": fresh_acc, "teacher_accuracy": round(100 * teacher_acc, 2),
            "loop_s": round(loop_s), "train_s": fresh_s}


def fresh_student(images: torch.Tensor, labels: torch.Tensor, seed: int, test, device: str = "cpu") -> tuple:
    """A fresh ``lenet5_half`` trained on ``(images, labels)`` with the frontier's recipe (the product's zero-shot
    default, :data:`~db3_timm.pipeline.ZERO_SHOT_TRAIN`: its sample cap, learning rate and batch); returns
    (test %, s)."""
    import timm

    from db3_timm.pipeline import ZERO_SHOT_TRAIN as RECIPE
    from db3_timm.training import evaluate, fit

    t0 = time.time()
    torch.manual_seed(seed)
    model = timm.create_model("lenet5_half", num_classes=CLASSES)
    fit(model, images, labels, epochs=max(1, RECIPE.max_samples // len(images)), lr=RECIPE.lr,
        batch_size=RECIPE.batch_size, seed=seed, device=device)
    return round(100 * evaluate(model, test.images, test.labels), 2), round(time.time() - t0)


def run_real(seed: int, images: int, device: str = "cpu") -> dict:
    """The ceiling: ``images`` real training images labelled by the teacher, the frontier's recipe."""
    from db3_timm import LabelOracle
    from db3_timm.data import load_image_dataset

    teacher, teacher_acc = fmnist_teacher(verbose=False)
    x = load_image_dataset("fashion-mnist", "train").images[:images]
    y = LabelOracle.from_timm_model(teacher, max_batch_size=8192, device=device)(x).long().cpu()
    acc, secs = fresh_student(x, y, seed, load_image_dataset("fashion-mnist", "test"), device)
    return {"mode": "real", "seed": seed, "queries": images, "accuracy": acc,
            "teacher_accuracy": round(100 * teacher_acc, 2), "train_s": secs}


def table(rows: list) -> str:
    """Markdown: mean ± sd over seeds per (mode, settings) of each reported accuracy, with queries and time."""
    groups: dict = {}
    for r in rows:
        key = (r["mode"], r.get("epochs"), r.get("ngf"), r["queries"] if r["mode"] == "real" else 0)
        groups.setdefault(key, []).append(r)

    def ms(vals: list) -> str:
        return f"{statistics.mean(vals):.2f}" + (f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else "")

    lines = ["| reference | seeds | queries (distinct) | fresh student, frontier recipe | loop student: final | "
             "loop student: best test epoch | wall time per run |", "|---|---|---|---|---|---|---|"]
    for (mode, epochs, ngf, _), rs in groups.items():
        name = "real images" if mode == "real" else f"IDEAL protocol, {epochs} epochs, ngf {ngf}"
        loop = [ms([r[k] for r in rs]) + " %" if mode == "ideal" else "—" for k in ("loop_final", "loop_best")]
        wall = statistics.mean(r.get("loop_s", 0) + r["train_s"] for r in rs)
        lines.append(f"| {name} | {len(rs)} | {max(r['queries'] for r in rs):,} | "
                     f"{ms([r['accuracy'] for r in rs])} % | {loop[0]} | {loop[1]} | {wall:,.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("real", "ideal"), default="real")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=50_000, help="real: how many training images the teacher labels")
    ap.add_argument("--epochs", type=int, default=100, help="ideal: epochs (250 generated images each)")
    ap.add_argument("--ngf", type=int, default=32, help="ideal: generator width (the release: 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the teacher, generator and students run (e.g. cuda)")
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "zero_shot_references.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of what --out holds, run nothing")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table:
        torch.set_num_threads(args.threads)
        print(machine_info(), flush=True)
        for seed in args.seeds:
            row = run_real(seed, args.images, args.device) if args.mode == "real" \
                else run_ideal(seed, args.epochs, args.ngf, args.device)
            row["device"] = args.device
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    print(table(rows))


if __name__ == "__main__":
    main()
