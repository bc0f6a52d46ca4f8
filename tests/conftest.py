import os

import pytest
import torch

# Tests never reach the network; a Hub call that slips through must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


class AffineNet(torch.nn.Module):
    """f(x) = W x + b on flattened pixels: a classifier whose decision boundaries have closed forms."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)
        self.num_classes = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def affine_net():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3 * 4 * 4, generator=g)
    bias = torch.randn(4, generator=g) * 0.1
    return AffineNet(weight, bias)


@pytest.fixture
def perturbed_lenet_half():
    """A `lenet5_half` with weights far from its init, so labels vary and a reload that ignored the weights shows."""
    import timm

    import db3_timm  # noqa: F401  (registers lenet5_half)

    torch.manual_seed(0)
    model = timm.create_model("lenet5_half", num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny convolutions are as fast, and two OpenMP threads stall on a shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
