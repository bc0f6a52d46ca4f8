import math

import pytest
import torch

from db3_timm import LabelOracle, References, create_labeler, distances_to_logits, list_labelers


# An affine map with i.i.d. random weights has no spatial smoothness, so MBD's default smooth
# (coarse-grid) probes would not suit it: the tests below ask for full-resolution probes.
FULL_RES = {"probe_scale": 1}


def affine_problem(num_classes=2, shape=(1, 4, 4), n=12, seed=0, spread=0.03):
    """An affine teacher centred on the middle of the box, so small distances never touch the bounds."""
    g = torch.Generator().manual_seed(seed)
    dim = math.prod(shape)
    w = torch.randn(num_classes, dim, generator=g)
    b = -w.sum(1) * 0.5
    oracle = LabelOracle.from_callable(
        lambda x: (x.flatten(1) @ w.T + b).argmax(1), num_classes=num_classes, input_size=shape
    )
    x = (0.5 + spread * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    refs = torch.rand(400, *shape, generator=g)
    return oracle, w, b, x, refs


def pairwise_truth(w, b, x, y, t):
    """Exact distance to the y/t boundary of an affine two-class map: (f_y - f_t) / ||w_y - w_t||."""
    f = x.flatten(1) @ w.T + b
    return (f.gather(1, y[:, None]) - f.gather(1, t[:, None])).squeeze(1) / (w[y] - w[t]).norm(dim=1)


def test_builtin_labelers_are_registered():
    assert {"sd", "bd", "mbd"} <= set(list_labelers())
    assert list_labelers("*bd") == ["bd", "mbd"]


def test_reciprocal_rule_closed_form():
    d = torch.tensor([[0.0, 2.0, 4.0, math.inf], [0.5, 0.0, 1e-9, 0.25]])
    y = torch.tensor([0, 1])
    z = distances_to_logits(d, y)
    assert torch.allclose(z[0], torch.tensor([0.75, 0.5, 0.25, 0.0]))
    assert torch.isfinite(z).all() and z[1, 2] == 1e6 and torch.isclose(z[1, 1], z[1].sum() - z[1, 1])
    with pytest.raises(ValueError, match="unknown soft-label rule 'nope'"):
        distances_to_logits(d, y, rule="nope")


def test_sd_is_the_nearest_teacher_labelled_reference():
    oracle, w, b, x, refs = affine_problem(num_classes=3, n=8)
    labeler = create_labeler("sd", oracle)
    out = labeler.label(x, refs)
    teacher_refs = oracle(refs)
    brute = torch.cdist(x.flatten(1), refs.flatten(1))
    for c in range(3):
        expect = brute[:, teacher_refs == c].min(1).values
        mask = out.labels != c
        assert torch.allclose(out.distances[mask, c], expect[mask])
    assert (out.distances.gather(1, out.labels[:, None]) == 0).all()


def test_misclassified_references_are_not_used():
    oracle, w, b, x, refs = affine_problem(n=6)
    y = oracle(x)
    # A near-copy of each sample, claimed to be of the other class, but the teacher disagrees.
    decoys = (x + 1e-4).clamp(0, 1)
    decoy_claims = 1 - y
    assert (oracle(decoys) == y).all()
    images = torch.cat([refs, decoys])
    claims = torch.cat([oracle(refs), decoy_claims])
    out = create_labeler("sd", oracle).label(x, (images, claims))
    assert (out.distances.gather(1, (1 - out.labels)[:, None]) > 1e-2).all()


def test_bd_equals_closed_form_crossing_along_the_reference_direction():
    oracle, w, b, x, refs = affine_problem(n=10)
    out = create_labeler("bd", oracle, directions=1, tol=1e-4, queries_per_target=100).label(x, refs)
    y, t = out.labels, 1 - out.labels
    checked = References(refs, oracle(refs))
    nearest = torch.cdist(x.flatten(1), refs.flatten(1)).masked_fill(checked.labels[None] != t[:, None], math.inf).argmin(1)
    r = refs[nearest].flatten(1)
    f0 = (x.flatten(1) @ w.T + b)
    f1 = (r @ w.T + b)
    m0 = f0.gather(1, y[:, None]) - f0.gather(1, t[:, None])
    m1 = f1.gather(1, y[:, None]) - f1.gather(1, t[:, None])
    expected = (m0 / (m0 - m1)).squeeze(1) * (r - x.flatten(1)).norm(dim=1)
    got = out.distances.gather(1, t[:, None]).squeeze(1)
    assert torch.all(got >= expected * (1 - 1e-6))
    assert torch.allclose(got, expected, rtol=2e-4)


def test_mbd_reaches_the_exact_minimum_and_never_undercuts_it():
    oracle, w, b, x, refs = affine_problem(n=10)
    out = create_labeler("mbd", oracle, queries_per_target=2000, **FULL_RES).label(x, refs)
    truth = pairwise_truth(w, b, x, out.labels, 1 - out.labels)
    got = out.distances.gather(1, (1 - out.labels)[:, None]).squeeze(1)
    # Past 1,500 queries mbd bisects to 1e-5, where the float32 teacher's own rounding shows (~3e-6).
    assert torch.all(got >= truth * (1 - 2e-5)), "a reported distance undercuts the true minimum"
    assert torch.all(got <= truth * 1.01), (got / truth)


def test_mbd_improves_on_bd_at_the_same_budget():
    oracle, w, b, x, refs = affine_problem(num_classes=4, shape=(1, 6, 6), n=8)
    bd = create_labeler("bd", oracle, queries_per_target=300).label(x, refs)
    mbd = create_labeler("mbd", oracle, queries_per_target=300, **FULL_RES).label(x, refs)
    finite = torch.isfinite(bd.distances) & (bd.distances > 0)
    assert (mbd.distances[finite] <= bd.distances[finite] * (1 + 1e-6)).all()
    assert mbd.distances[finite].sum() < 0.8 * bd.distances[finite].sum()


@pytest.mark.parametrize("name", ["bd", "mbd"])
def test_query_accounting_is_exact_and_within_budget(name):
    oracle, w, b, x, refs = affine_problem(num_classes=4, shape=(1, 6, 6), n=9)
    qpt = 150
    before = oracle.queries
    out = create_labeler(name, oracle, queries_per_target=qpt, max_pairs=10).label(x, refs)
    assert oracle.queries - before == int(out.queries.sum()) + out.reference_queries
    assert out.reference_queries == refs.shape[0]
    assert (out.queries <= 1 + 3 * qpt).all() and (out.queries > 1).all()
    # A global oracle budget set to exactly what the run needs is enough, and is never exceeded.
    oracle.budget = oracle.queries + int(out.queries.sum()) + out.reference_queries
    again = create_labeler(name, oracle, queries_per_target=qpt, max_pairs=10).label(x, refs)
    assert oracle.remaining == 0 and torch.equal(again.distances, out.distances)


def test_mbd_is_seeded_and_reproducible():
    oracle, w, b, x, refs = affine_problem(num_classes=3, shape=(1, 6, 6), n=6)
    checked = create_labeler("mbd", oracle).check_references(refs)
    a = create_labeler("mbd", oracle, queries_per_target=200, seed=1).label(x, checked)
    b_ = create_labeler("mbd", oracle, queries_per_target=200, seed=1).label(x, checked)
    c = create_labeler("mbd", oracle, queries_per_target=200, seed=2).label(x, checked)
    assert torch.equal(a.distances, b_.distances) and torch.equal(a.queries, b_.queries)
    assert not torch.equal(a.distances, c.distances)
    assert a.reference_queries == 0  # references passed pre-checked are not queried again


def test_without_references_starts_come_from_a_budgeted_random_search():
    oracle, w, b, x, refs = affine_problem(num_classes=2, shape=(1, 6, 6), n=5)
    out = create_labeler("bd", oracle, queries_per_target=80, random_start_queries=30).label(x)
    assert out.info["reference_source"] == "random-search"
    found = torch.isfinite(out.distances).all(1)
    assert found.any() and (out.queries <= 1 + 80).all()


def test_bad_configuration_is_named():
    oracle, *_ = affine_problem()
    with pytest.raises(ValueError, match="queries_per_target"):
        create_labeler("mbd", oracle, queries_per_target=0)
    with pytest.raises(ValueError, match="needs references"):
        create_labeler("sd", oracle).label(torch.rand(2, 1, 4, 4))


@pytest.mark.parametrize("options, message", [
    ({"queries_per_target": 1.5}, "queries_per_target must be an integer in \\[1, 1000000000\\], got 1.5"),
    ({"queries_per_target": 1e30}, "queries_per_target must be an integer in \\[1, 1000000000\\], got 1e\\+30"),
    ({"probes": -1}, "probes=-1: expected at least 1"),
    ({"probes": 0}, "probes=0: expected at least 1"),
    ({"momentum": -5}, "momentum=-5: expected at least 0"),
    ({"num_classes": 50}, "num_classes=50 but the teacher answers 2 classes"),
    ({"rule": "bogus"}, "unknown soft-label rule 'bogus'"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"prior": "lenet5"}, "prior must be a white-box nn.Module or a direction-prior callable"),
])
def test_nonsense_options_are_refused_when_the_labeler_is_built(options, message):
    # Checked at construction, so a bad option never costs a query.
    oracle, *_ = affine_problem()
    with pytest.raises((ValueError, TypeError), match=message):
        create_labeler("mbd", oracle, **options)
    assert oracle.queries == 0


@pytest.mark.parametrize("name", ["sd", "bd", "mbd"])
def test_known_teacher_labels_skip_the_label_query_and_change_nothing_else(name):
    oracle, w, b, x, refs = affine_problem(num_classes=3, n=8)
    cfg = {} if name == "sd" else {"queries_per_target": 80, **(FULL_RES if name == "mbd" else {})}
    checked = create_labeler(name, oracle).check_references(refs)
    plain = create_labeler(name, oracle, **cfg).label(x, checked)
    before = oracle.queries
    known = create_labeler(name, oracle, **cfg).label(x, checked, labels=plain.labels)
    assert oracle.queries - before == int(known.queries.sum()) == int(plain.queries.sum()) - x.shape[0]
    assert torch.equal(known.distances, plain.distances) and torch.equal(known.logits, plain.logits)
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(8,\)"):
        create_labeler(name, oracle).label(x, checked, labels=plain.labels[:3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values in \[0, 7\]"):
        create_labeler(name, oracle).label(x, checked, labels=torch.full((8,), 7).index_fill(0, torch.tensor([0]), 0))
