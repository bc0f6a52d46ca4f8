"""``synth``: a generator network trained against a working student, queried with hard labels only.

Data-free, decision-based distillation in the spirit of IDEAL (ICLR 2023) and DFHL-RS (AAAI 2024), written
for this project's oracle and query store. Each round of ``queries_per_round`` teacher queries:

1. the generator (a small upsampling CNN) is trained so the *working student* assigns its samples to random
   classes (label-smoothed targets) with the classes balanced over the batch -- no teacher query;
2. the batch is pushed toward the working student's decision boundaries (a few signed-gradient steps that
   raise the student's entropy): where the student is unsure is where the teacher's answer teaches most;
3. the teacher labels the batch: the round's only queries, every answer kept (the memory bank);
4. the working student trains on the whole bank (hard labels, cross-entropy; no augmentation by default: the
   teacher's label of a noise-like image does not survive a shift).

The bank -- every image the teacher labelled -- is the transfer set; the product trains a fresh student on it
(measured better than keeping the working student). The whole state (generator, working student, optimisers)
is a few hundred kB and is saved after every round, so a killed run resumes to the same samples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_int, check_number
from .._registry import register_generator
from ..oracle import LabelOracle
from .priors import noise_prior

__all__ = ["SynthConfig", "ImageGenerator", "SynthGenerator", "AUGMENTS", "TARGETS"]

AUGMENTS = ("none", "shift", "shift+flip")
TARGETS = ("random", "balanced", "rare")


@dataclass
class SynthConfig:
    """Settings of the ``synth`` generator (checked on creation; every one is recorded with the run).

    Attributes:
        queries_per_round: teacher queries (generated images) per round.
        latent_dim, width: the generator's latent size and channel width.
        generator_steps, generator_lr, latent_lr: generator updates per round, their learning rate, and that of
            the round's latent codes (optimised with the generator).
        smoothing: label smoothing of the random class targets the generator aims the student at.
        balance: weight of the class-balance term (the batch's mean student prediction kept near uniform).
        boundary_steps, boundary_step: signed-gradient steps (pixel scale) toward the student's boundaries.
        student: the working student's timm architecture (only steers the generator; not the one delivered).
        student_steps, student_batch, student_lr: working-student updates on the bank per round.
        augment: ``"none"``, ``"shift"`` (up to 2 px) or ``"shift+flip"`` (for classes that survive a mirror), in the
            generator's loss and the working student's updates. ``"none"`` by default: a shifted image keeps the
            teacher's label only if the teacher is shift-invariant there, and on noise-like images it is not
            (Fashion-MNIST, 50k labelled smooth-noise images: a student trained with shifts scored 63.1 % against
            67.5 % without, one seed). At the product level (50k, 3 seeds) the two are within one sd, the
            shift-free runs less spread (``benchmarks/RESULTS.md``).
        proposer: ``"generator"`` (the generator network's samples) or ``"noise"`` (smooth noise every round: the
            boundary push alone steers the queries; no generator is trained).
        targets: how the classes the generator aims at are drawn: ``"random"`` (uniformly, as DFHL-RS),
            ``"balanced"`` (every class equally often in each batch, as IDEAL) or ``"rare"`` (with weight
            ``1 / sqrt(1 + answers so far)`` per class, so classes the teacher has rarely answered are aimed at more).
        reinit: a freshly initialised generator (and optimiser) every generator round, as IDEAL does, instead of
            one generator trained across rounds: batches from different rounds cannot collapse onto one mode, but
            each round starts from scratch, so it wants more ``generator_steps``.
        noise_rounds: first rounds whose batch is smooth noise (:func:`~db3_timm.generators.priors.smooth_noise`)
            instead of the generator's: a working student that already knows the teacher's coarse regions steers
            the generator from the start.
        noise_prior: the noise of those rounds (and of ``proposer="noise"``), a
            :data:`~db3_timm.generators.priors.NOISE_PRIORS` name (``"smooth"``, ``"stretched"``).
    """

    queries_per_round: int = 250
    latent_dim: int = 64
    width: int = 16
    generator_steps: int = 5
    generator_lr: float = 2e-3
    latent_lr: float = 1e-2
    smoothing: float = 0.2
    balance: float = 3.0
    boundary_steps: int = 5
    boundary_step: float = 0.03
    student: str = "lenet5_half"
    student_steps: int = 40
    student_batch: int = 256
    student_lr: float = 1e-3
    augment: str = "none"
    proposer: str = "generator"
    targets: str = "random"
    reinit: bool = False
    noise_rounds: int = 0
    noise_prior: str = "smooth"

    def __post_init__(self) -> None:
        for name, low in (("queries_per_round", 1), ("latent_dim", 1), ("width", 1), ("generator_steps", 0),
                          ("boundary_steps", 0), ("student_steps", 0), ("student_batch", 1), ("noise_rounds", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low))
        for name in ("generator_lr", "latent_lr", "student_lr", "boundary_step"):
            setattr(self, name, check_number(name, getattr(self, name), low=0))
        self.smoothing = check_number("smoothing", self.smoothing, low=0, high=1, high_open=True)
        self.balance = check_number("balance", self.balance, low=0)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if not isinstance(self.reinit, bool):
            raise ValueError(f"reinit must be true or false, got {self.reinit!r}")
        noise_prior(self.noise_prior)
        if self.proposer not in ("generator", "noise"):
            raise ValueError(f"proposer must be 'generator' or 'noise', got {self.proposer!r}")
        if not isinstance(self.student, str) or not self.student:
            raise ValueError(f"student must be a timm model name, got {self.student!r}")


class ImageGenerator(nn.Module):
    """Latent ``(N, latent_dim)`` -> images ``(N, C, H, W)`` in ``(0, 1)``: a linear layer to a quarter-size map,
    two upsampling conv blocks, a sigmoid (resized to ``H, W`` when they are not multiples of 4)."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], width: int = 16):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.size, self.base, self.width = (h, w), (max(1, -(-h // 4)), max(1, -(-w // 4))), int(width)
        self.fc = nn.Linear(latent_dim, 2 * width * self.base[0] * self.base[1])
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(self.fc(z).view(z.shape[0], 2 * self.width, *self.base))
        return x if tuple(x.shape[-2:]) == self.size else F.interpolate(x, self.size, mode="bilinear", align_corners=False)


def _augment(x: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor:
    if how == "none":
        return x
    h, w = x.shape[-2:]
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = F.pad(x, (2, 2, 2, 2))[:, :, dy:dy + h, dx:dx + w]
    if how == "shift+flip":
        flip = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class SynthGenerator:
    """The ``synth`` generator: see the module docstring. Drive it with :meth:`round`; save it with :meth:`state_dict`.

    Args:
        oracle: the label-only teacher (its classes and input size size the generator).
        seed: initialises the generator and the working student.
        input_shape: ``(C, H, W)`` when the oracle does not declare its input size.
        num_classes: when the oracle does not declare its classes.
        **cfg: :class:`SynthConfig` fields.
    """

    def __init__(self, oracle: LabelOracle, *, seed: int = 0, input_shape: Optional[Sequence[int]] = None,
                 num_classes: Optional[int] = None, **cfg: Any):
        from ..models import create_image_model

        self.oracle, self.cfg = oracle, SynthConfig(**cfg)
        self.num_classes = int(num_classes or oracle.num_classes or 0)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (pass num_classes=), got {num_classes!r}")
        shape = input_shape or oracle.input_size
        if shape is None or len(tuple(shape)) != 3 or min(int(v) for v in shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) positive integers, got {shape!r}")
        self.image_shape = tuple(int(v) for v in shape)
        if self.cfg.augment != "none" and min(self.image_shape[1:]) < 5:
            raise ValueError(f"augment={self.cfg.augment!r} shifts by 2 px: images of {self.image_shape} are too small")
        self.device = oracle.device
        with torch.random.fork_rng(devices=[]):  # timm initialises from the global generator: seed it, leave it as it was
            torch.manual_seed(int(seed))
            self.student = create_image_model(self.cfg.student, self.num_classes, self.image_shape)
            self.generator = ImageGenerator(self.cfg.latent_dim, self.image_shape, self.cfg.width)
        self.student.to(self.device)
        self.generator.to(self.device)
        from .._preprocess import PixelTransform

        self.normalize = PixelTransform.for_model(self.student, resize_to_model="never")
        self.student_opt = torch.optim.Adam(self.student.parameters(), lr=self.cfg.student_lr)
        self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.generator_lr, betas=(0.5, 0.999))
        self.rounds = 0
        self.answers = torch.zeros(self.num_classes, dtype=torch.long)  # the teacher's answers per class so far

    def config(self) -> Dict[str, Any]:
        """Returns the settings that determine the samples (recorded with the run, compared on resume)."""
        cfg = asdict(self.cfg)
        if cfg["noise_prior"] == "smooth":  # unrecorded, as before there was a choice, so older jobs resume
            del cfg["noise_prior"]
        return {"generator": "synth", "num_classes": self.num_classes, "input_shape": list(self.image_shape), **cfg}

    def planned_queries(self, rounds: int) -> int:
        """Returns the teacher queries ``rounds`` rounds spend (exactly)."""
        return int(rounds) * self.cfg.queries_per_round

    # ------------------------------------------------------------------ one round
    def propose(self, generator: torch.Generator) -> torch.Tensor:
        """Returns the round's batch (pixel space, on the oracle's device): steps 1 and 2, no teacher query."""
        if self.rounds < self.cfg.noise_rounds:  # warm-up: the working student first learns the coarse regions
            return self._noise(generator)
        if self.cfg.proposer == "noise":
            return self._toward_boundaries(self._noise(generator))
        return self._toward_boundaries(self._generate(generator))

    def _noise(self, generator: torch.Generator) -> torch.Tensor:
        n = self.cfg.queries_per_round
        return noise_prior(self.cfg.noise_prior)(n, self.image_shape, generator, torch.device("cpu")).to(self.device)

    def _generate(self, generator: torch.Generator) -> torch.Tensor:
        """Step 1: the generator and the round's latents trained against the working student; the best batch."""
        cfg, n, c = self.cfg, self.cfg.queries_per_round, self.num_classes
        if cfg.reinit:
            self._fresh_generator(generator)
        z = torch.randn(n, cfg.latent_dim, generator=generator).to(self.device).requires_grad_(True)
        y = self._target_classes(n, generator)
        target = torch.full((n, c), cfg.smoothing / (c - 1), device=self.device).scatter_(1, y.view(-1, 1), 1 - cfg.smoothing)
        opt_z = torch.optim.Adam([z], lr=cfg.latent_lr, betas=(0.5, 0.999))
        self.student.eval()
        self.generator.train()
        best, best_loss = None, None
        for _ in range(cfg.generator_steps):
            x = self.generator(z)
            logits = self.student(self.normalize(_augment(x, cfg.augment, generator)))
            mean = logits.softmax(1).mean(0)
            loss = F.kl_div(logits.log_softmax(1), target, reduction="batchmean") + cfg.balance * (mean * mean.clamp_min(1e-12).log()).sum()
            if best is None:
                best, best_loss = x.detach(), loss.detach()
            else:  # keep the best batch seen (the last step may overshoot); selected on the device, no host sync
                better = loss.detach() < best_loss
                best, best_loss = torch.where(better, x.detach(), best), torch.minimum(best_loss, loss.detach())
            self.generator_opt.zero_grad(set_to_none=True)
            opt_z.zero_grad(set_to_none=True)
            loss.backward()
            self.generator_opt.step()
            opt_z.step()
        if best is None:  # generator_steps=0: the generator as it is
            with torch.no_grad():
                best = self.generator(z)
        return best

    def _fresh_generator(self, generator: torch.Generator) -> None:
        """Re-initialises the generator and its optimiser from the round's random stream (so a resumed round
        gets the same initialisation)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = ImageGenerator(self.cfg.latent_dim, self.image_shape, self.cfg.width)
        self.generator.load_state_dict(fresh.state_dict())
        self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.generator_lr, betas=(0.5, 0.999))

    def _target_classes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The classes the generator aims the working student at (see ``SynthConfig.targets``)."""
        if self.cfg.targets == "balanced":
            return (torch.randperm(n, generator=generator) % self.num_classes).to(self.device)
        if self.cfg.targets == "rare":
            weights = (1.0 + self.answers.double()).rsqrt()
            return torch.multinomial(weights, n, replacement=True, generator=generator).to(self.device)
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(self.device)

    def _toward_boundaries(self, x: torch.Tensor) -> torch.Tensor:
        """Step 2: signed-gradient steps that raise the working student's entropy (no teacher query)."""
        self.student.eval()
        for _ in range(self.cfg.boundary_steps):
            x = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(_entropy(self.student(self.normalize(x))).sum(), [x])
            x = (x + self.cfg.boundary_step * grad.sign()).clamp(0, 1)
        return x.detach()

    def learn(self, bank_x: torch.Tensor, bank_y: torch.Tensor, generator: torch.Generator) -> None:
        """Step 4: the working student trains on the bank (``student_steps`` minibatches drawn from ``generator``)."""
        cfg = self.cfg
        self.student.train()
        for _ in range(cfg.student_steps):
            idx = torch.randint(0, bank_x.shape[0], (min(cfg.student_batch, bank_x.shape[0]),), generator=generator)
            x = _augment(bank_x[idx].to(self.device), cfg.augment, generator)
            loss = F.cross_entropy(self.student(self.normalize(x)), bank_y[idx].to(self.device))
            self.student_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.student_opt.step()
        self.answers = torch.bincount(bank_y.cpu(), minlength=self.num_classes)
        self.rounds += 1

    # ------------------------------------------------------------------ resumption
    def state_dict(self) -> Dict[str, Any]:
        """Returns everything a resumed run needs (generator, working student, both optimisers, rounds done)."""
        return {"rounds": self.rounds, "answers": self.answers, "generator": self.generator.state_dict(),
                "student": self.student.state_dict(),
                "generator_opt": self.generator_opt.state_dict(), "student_opt": self.student_opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.generator.load_state_dict(state["generator"])
        self.student.load_state_dict(state["student"])
        self.generator_opt.load_state_dict(state["generator_opt"])
        self.student_opt.load_state_dict(state["student_opt"])
        self.rounds = int(state["rounds"])
        self.answers = state.get("answers", torch.zeros(self.num_classes)).long().cpu()  # absent in older states


@register_generator(name="synth")
def synth(oracle: LabelOracle, **cfg: Any) -> SynthGenerator:
    """Builds the ``synth`` generator (a generator network trained against a working student)."""
    return SynthGenerator(oracle, **cfg)
