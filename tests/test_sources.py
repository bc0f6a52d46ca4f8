"""Query sources: each spends its exact budget, keeps every answer as a row, resumes without asking twice."""
import math

import pytest
import torch

from db3_timm import LabelOracle, create_labeler, create_source, list_sources, register_source
from db3_timm.labelers.base import References
from db3_timm.sources import Source, unit_generator
from db3_timm.transfer.build import build_transfer_set
from db3_timm.transfer.plan import Plan, PlanStep


def _teacher(num_classes=4, shape=(1, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes, math.prod(shape), generator=g)
    b = -w.sum(1) * 0.5
    return LabelOracle.from_callable(lambda x: (x.flatten(1) @ w.T + b).argmax(1), num_classes=num_classes,
                                     input_size=shape), w, b


def _images(n=40, seed=1):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def _build(tmp_path, oracle, steps, images, name="t", **kw):
    return build_transfer_set(oracle, Plan(name, steps), tmp_path / name, images=images, progress=False, **kw)


def test_builtin_sources_are_registered():
    assert {"hard", "mixes", "boundary", "augment", "db3", "zsdb3"} <= set(list_sources())


@pytest.mark.parametrize("source, options", [("mixes", {}), ("augment", {}), ("boundary", {"steps": 3})])
def test_a_source_spends_exactly_its_budget_and_keeps_every_answer(tmp_path, source, options):
    oracle, *_ = _teacher()
    x = _images()
    steps = [PlanStep("hard", 40, ""), PlanStep(source, 1000, "", {**options, "unit_size": 300})]
    ts = _build(tmp_path, oracle, steps, x)
    assert oracle.queries == ts.queries["total"] == 1040 and ts.queries[source] == 1000 and ts.queries["hard"] == 40
    rows = ts.tensors()
    assert len(rows["label"]) == 1040 and torch.equal(oracle(rows["image"]), rows["label"])  # every row is an answer
    assert rows["image"].min() >= 0 and rows["image"].max() <= 1
    before = oracle.queries
    again = _build(tmp_path, oracle, steps, x)  # a finished job read back: nothing asked again
    assert oracle.queries == before and again.queries == ts.queries


def test_a_killed_job_resumes_to_the_same_rows(tmp_path):
    x = _images()
    steps = [PlanStep("hard", 40, ""), PlanStep("mixes", 900, "", {"unit_size": 200}),
             PlanStep("augment", 500, "", {"unit_size": 200})]
    straight, _, _ = _teacher()
    whole = _build(tmp_path, straight, steps, x, name="whole").tensors()

    class Killed(Exception):
        pass

    killer, _, _ = _teacher()

    def die(batch, total):
        if total > 700:  # inside the mixes
            raise Killed

    killer.query_log = die
    with pytest.raises(Killed):
        _build(tmp_path, killer, steps, x, name="resumed")
    resumer, _, _ = _teacher()
    resumed = _build(tmp_path, resumer, steps, x, name="resumed").tensors()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert resumer.queries < straight.queries  # only the unfinished units were asked again


def test_boundary_pairs_land_nearer_the_boundary_than_mixes(tmp_path):
    oracle, w, b = _teacher(num_classes=2)
    x = _images(60)

    def margin(images):  # distance to the affine teacher's only boundary
        f = images.flatten(1) @ w.T + b
        return (f[:, 0] - f[:, 1]).abs() / (w[0] - w[1]).norm()

    rows = {}
    for source in ("mixes", "boundary"):
        ts = _build(tmp_path, oracle, [PlanStep("hard", 60, ""), PlanStep(source, 1200, "", {})], x, name=source)
        cols = ts.tensors()
        rows[source] = cols["image"][60:]
    assert float(margin(rows["boundary"]).median()) < 0.5 * float(margin(rows["mixes"]).median())


def test_db3_soft_rows_are_the_labelers_answers_and_its_probes_are_kept(tmp_path):
    oracle, *_ = _teacher()
    x = _images(20)
    steps = [PlanStep("hard", 20, ""), PlanStep("db3", 20 * 3 * 12, "", {"labeler": "mbd", "references_per_class": 3,
                                                                         "options": {"queries_per_target": 12}})]
    ts = _build(tmp_path, oracle, steps, x)
    rows = ts.tensors()
    soft = rows["kd_weight"] == 1
    assert int(soft.sum()) == 20 and torch.equal(rows["image"][soft], x)
    assert ts.queries["total"] == int((~soft).sum()) == 20 + ts.queries["mbd"]  # every probe is a hard row
    # The soft rows equal a direct call of the labeler with the unit's generator and the free references.
    labels = rows["label"][:20]
    ref = torch.cat([torch.nonzero(labels == c).flatten()[:3] for c in range(4)]).sort().values
    direct = create_labeler("mbd", _teacher()[0], queries_per_target=12).label(
        x, References(x[ref], labels[ref], 0), labels=labels, generator=unit_generator(0, "mbd", 0))
    assert torch.allclose(rows["soft_logits"][soft], direct.logits)


def test_bad_options_and_orders_are_refused_before_any_query(tmp_path):
    oracle, *_ = _teacher()
    with pytest.raises(ValueError, match="flip must be a finite number in \\[0, 1\\], got 2"):
        create_source("augment", flip=2)
    with pytest.raises(ValueError, match="unknown labeler 'nope'"):
        create_source("db3", labeler="nope")
    with pytest.raises(ValueError, match="plan must start with the 'hard' source"):
        _build(tmp_path, oracle, [PlanStep("boundary", 100, "")], _images())
    with pytest.raises(ValueError, match="one query per image \\(40\\), got a budget of 10"):
        _build(tmp_path, oracle, [PlanStep("hard", 10, "")], _images(), name="small")
    assert oracle.queries == 0


def test_a_plugin_source_joins_a_plan(tmp_path):
    @register_source(name="corners")
    class Corners(Source):  # asks about the four corner images of the box
        name = "corners"

        def run(self, ctx, queries):
            def work(k, size, generator):
                ctx.oracle(torch.stack([torch.full(ctx.image_shape, float(v)) for v in (0, 1)] * (size // 2)))

            return ctx.run_units(self.name, queries, 4, work)

    oracle, *_ = _teacher()
    ts = _build(tmp_path, oracle, [PlanStep("corners", 8, "")], None)
    assert ts.queries == {"corners": 8, "total": 8} and set(ts.rows["source"]) == {"corners"}
