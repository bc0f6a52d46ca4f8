import pytest
import torch
import torch.nn as nn

from db3_timm import create_labeler
from db3_timm.labelers.prior import SurrogatePrior

from test_labelers import affine_problem, pairwise_truth


class Affine(nn.Module):
    """The affine teacher itself as a white-box surrogate: a perfect prior."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_surrogate_prior_is_the_margin_gradient():
    _, w, b, x, _ = affine_problem(num_classes=3, n=5)
    prior = SurrogatePrior(Affine(w, b))
    f = x.flatten(1) @ w.T + b
    y = f.argmax(1)
    t = (y + 1) % 3
    runner_up = f.scatter(1, t[:, None], float("-inf")).argmax(1)
    got = prior(x, y, t)
    assert got.shape == x.shape
    assert torch.allclose(got.flatten(1), w[t] - w[runner_up], atol=1e-5)
    # Untargeted: away from the own class, toward the strongest other one.
    second = f.scatter(1, y[:, None], float("-inf")).argmax(1)
    assert torch.allclose(prior(x, y, None).flatten(1), w[second] - w[y], atol=1e-5)


@pytest.mark.parametrize("prior_stall", [0.01, 0.0])  # 0: the prior alone, no random probes
def test_a_perfect_prior_reaches_the_minimum_on_a_small_budget(prior_stall):
    oracle, w, b, x, refs = affine_problem(shape=(1, 8, 8), n=10)
    kwargs = dict(queries_per_target=120, probe_scale=1)
    plain = create_labeler("mbd", oracle, **kwargs).label(x, refs)
    before = oracle.queries
    guided = create_labeler("mbd", oracle, prior=Affine(w, b), prior_stall=prior_stall, **kwargs).label(x, refs)
    assert oracle.queries - before == int(guided.queries.sum()) + guided.reference_queries
    assert (guided.queries <= 1 + 120).all()
    truth = pairwise_truth(w, b, x, guided.labels, 1 - guided.labels)
    other = (1 - guided.labels)[:, None]
    got = guided.distances.gather(1, other).squeeze(1)
    # float32 pixels: a point labelled adversarial may sit a few ulps inside (1e-6 absolute is ~16 ulps at 0.5).
    assert torch.all(got >= truth * (1 - 1e-6) - 1e-6), "a reported distance undercuts the true minimum"
    assert torch.all(got <= truth * 1.01), got / truth
    assert plain.distances.gather(1, other).squeeze(1).median() > 1.05 * got.median()


def test_a_misleading_prior_costs_queries_not_correctness():
    oracle, w, b, x, refs = affine_problem(shape=(1, 8, 8), n=10)
    # Pointing away from the boundary: the search must reject it and still improve on BD.
    wrong = Affine(-w, -b)
    out = create_labeler("mbd", oracle, queries_per_target=400, probe_scale=1, prior=wrong).label(x, refs)
    bd = create_labeler("bd", oracle, queries_per_target=400).label(x, refs)
    truth = pairwise_truth(w, b, x, out.labels, 1 - out.labels)
    other = (1 - out.labels)[:, None]
    got = out.distances.gather(1, other).squeeze(1)
    assert torch.all(got >= truth * (1 - 1e-6))
    assert got.sum() < 0.8 * bd.distances.gather(1, other).sum()


def test_the_manifest_names_the_prior_by_its_weights_and_refuses_another_on_resume(tmp_path):
    from db3_timm.transfer.label import ConfigMismatchError, label_dataset, read_manifest

    oracle, w, b, x, refs = affine_problem(shape=(1, 8, 8), n=6)
    right, wrong = Affine(w, b), Affine(-w, -b)
    cfg = create_labeler("mbd", oracle, prior=right).config()["prior"]
    assert cfg["model"] == "Affine" and cfg["weights"].startswith("sha256:")
    assert create_labeler("mbd", oracle, prior=Affine(w, b)).config()["prior"] == cfg  # same weights, same run
    assert create_labeler("mbd", oracle, prior=wrong).config()["prior"]["weights"] != cfg["weights"]
    kw = dict(references=refs, shard_size=3, progress=False)
    label_dataset(create_labeler("mbd", oracle, queries_per_target=40, prior=right), x[:3], tmp_path, **kw)
    assert read_manifest(tmp_path)["config"]["labeler"]["prior"] == cfg
    with pytest.raises(ConfigMismatchError, match="labeler.prior.weights"):
        label_dataset(create_labeler("mbd", oracle, queries_per_target=40, prior=wrong), x[:3], tmp_path, **kw)


@pytest.mark.parametrize("arch", ["resnet10t", "mobilenetv3_small_050"])
def test_a_surrogate_with_batchnorm_is_fingerprinted(arch):
    import timm

    from db3_timm.labelers.prior import SurrogatePrior

    model = timm.create_model(arch, num_classes=10, in_chans=1)
    described = SurrogatePrior(model).describe()  # 0-dim BatchNorm counters included
    assert described["weights"].startswith("sha256:")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert SurrogatePrior(model).describe()["weights"] != described["weights"]
