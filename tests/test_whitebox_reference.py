"""The white-box reference attack (benchmarks/whitebox.py) against closed forms on affine models."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.whitebox import affine_check, all_target_pairs, min_norm_targeted  # noqa: E402


def test_two_class_affine_matches_closed_form_within_one_percent():
    res = affine_check(n=16, fmn_steps=100, cw_steps=50, cw_binary_steps=2)
    assert res["failures"] == 0
    assert res["max_rel_err"] < 0.01, res
    # an evaluated adversarial point can never beat the exact minimum (float slack only)
    assert res["min_signed_rel_err"] > -1e-4, res


def test_fmn_alone_matches_closed_form():
    res = affine_check(n=16, seed=1, fmn_steps=100, cw_binary_steps=0)
    assert res["failures"] == 0 and res["max_rel_err"] < 0.01, res


def test_cw_alone_gets_close_on_affine():
    # C&W is the coarser of the two (Adam steps in tanh space); it must still land near the boundary
    res = affine_check(n=8, seed=1, fmn_steps=0, cw_steps=80, cw_binary_steps=3)
    assert res["failures"] == 0 and res["mean_rel_err"] < 0.05 and res["min_signed_rel_err"] > -1e-4, res


def test_multiclass_affine_is_bounded_by_pairwise_closed_form_and_box_respected():
    """With K classes the targeted minimum is at least the pairwise distance to every rival
    (and equals the max of them when one constraint is active); results must be adversarial
    points inside the box."""
    g = torch.Generator().manual_seed(3)
    k, dim = 4, 48
    w = torch.randn(k, dim, generator=g)
    net = torch.nn.Linear(dim, k)
    with torch.no_grad():
        net.weight.copy_(w)
        net.bias.zero_()
    model = torch.nn.Sequential(torch.nn.Flatten(), net)
    x = torch.rand(6, 3, 4, 4, generator=g)
    y = model(x).argmax(1)
    xp, tp, _ = all_target_pairs(x, y, k)
    assert xp.shape[0] == 6 * (k - 1) and bool((tp != y.repeat_interleave(k - 1)).all())
    dist, det = min_norm_targeted(model, xp, tp, return_details=True, fmn_steps=100, cw_steps=50, cw_binary_steps=2)
    assert bool(torch.isfinite(dist).all())
    adv = xp + det["delta"]
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.equal(model(adv).argmax(1), tp)
    assert torch.allclose(det["delta"].flatten(1).norm(dim=1), dist, rtol=1e-5, atol=1e-6)
    f = model(xp)
    ft = f.gather(1, tp[:, None])
    lower = ((f - ft) / (w[None] - w[tp][:, None]).norm(dim=2).clamp_min(1e-12)).clamp_min(0).amax(1)
    assert bool((dist >= lower * (1 - 1e-4)).all())


def test_already_target_class_gives_zero_and_caller_flags_restored():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    net.train()
    x = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    pred = net(x).argmax(1)
    d = min_norm_targeted(net, x, pred, fmn_steps=5, cw_steps=5, cw_binary_steps=1)
    assert torch.equal(d, torch.zeros(5))
    assert net.training and all(p.requires_grad for p in net.parameters())
