import math

import pytest
import torch

from db3_timm import LabelOracle, create_generator, list_generators
from db3_timm.report import diversity_report


def affine_teacher(num_classes=4, shape=(1, 8, 8), seed=0, dead_class=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes, math.prod(shape), generator=g)
    b = -w.sum(1) * 0.5
    if dead_class is not None:
        b[dead_class] = -1e6  # the teacher never answers this class
    return LabelOracle.from_callable(lambda x: (x.flatten(1) @ w.T + b).argmax(1), num_classes=num_classes, input_size=shape)


def test_registered():
    assert "zsdb3" in list_generators("zs*")


@pytest.mark.parametrize("start", ["smooth", "reference"])
def test_samples_keep_their_class_stay_in_box_and_grow_robust(start):
    oracle = affine_teacher()
    before = oracle.queries
    out = create_generator("zsdb3", oracle, seed=0, start=start).generate(6, 5, 80, progress=False)
    assert out.images.shape == (24, 1, 8, 8) and torch.bincount(out.labels).tolist() == [6, 6, 6, 6]
    assert torch.equal(oracle(out.images), out.labels)
    assert out.images.min() >= 0 and out.images.max() <= 1
    mean = out.robustness.mean(1)
    assert mean[-1] > 1.5 * mean[0] and (mean[1:] >= mean[:-1] * 0.98).all(), mean
    # exact accounting: start search + at most queries_per_iteration per sample per iteration
    assert oracle.queries - before - 24 == out.queries["init"] + out.queries["iterations"]
    assert out.queries["iterations"] <= 24 * 5 * 80
    assert out.warm_starts > 0


def test_killed_generation_resumes_identically(tmp_path):
    oracle = affine_teacher()
    full = create_generator("zsdb3", oracle, seed=3).generate(5, 4, 50, progress=False, snapshots=(0, 2))

    class Killed(Exception):
        pass

    def die(it, stats):
        if it == 2:
            raise Killed

    with pytest.raises(Killed):
        create_generator("zsdb3", oracle, seed=3).generate(5, 4, 50, progress=False, out_dir=tmp_path, on_iteration=die, snapshots=(0, 2))
    spent_before = oracle.queries
    resumed = create_generator("zsdb3", oracle, seed=3).generate(5, 4, 50, progress=False, out_dir=tmp_path, snapshots=(0, 2))
    assert torch.equal(full.images, resumed.images)
    assert torch.equal(full.robustness, resumed.robustness)
    assert full.queries == resumed.queries and sorted(resumed.snapshots) == [0, 2]
    # only the two missing iterations were queried again
    assert oracle.queries - spent_before < full.queries["iterations"]
    with pytest.raises(ValueError, match="other settings .*seed: 3 -> 4"):
        create_generator("zsdb3", oracle, seed=4).generate(5, 4, 50, progress=False, out_dir=tmp_path)


def test_a_run_is_extended_or_refused_before_any_query(tmp_path):
    oracle = affine_teacher()
    four = create_generator("zsdb3", oracle, seed=1).generate(3, 4, 40, progress=False, out_dir=tmp_path)
    before = oracle.queries
    with pytest.raises(ValueError, match="already at iteration 4; asking for 2"):
        create_generator("zsdb3", oracle, seed=1).generate(3, 2, 40, progress=False, out_dir=tmp_path)
    assert oracle.queries == before  # refused before spending anything
    six = create_generator("zsdb3", oracle, seed=1).generate(3, 6, 40, progress=False, out_dir=tmp_path)
    straight = create_generator("zsdb3", affine_teacher(), seed=1).generate(3, 6, 40, progress=False)
    assert torch.equal(six.images, straight.images) and six.queries == straight.queries  # extending = running on
    assert torch.equal(six.robustness[:4], four.robustness)
    # The state is one file, so a kill can never leave tensors and bookkeeping from two different iterations.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]
    (tmp_path / "state.safetensors").write_bytes((tmp_path / "state.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="state.safetensors' is damaged"):
        create_generator("zsdb3", oracle, seed=1).generate(3, 6, 40, progress=False, out_dir=tmp_path)


def test_step_growth_lets_samples_travel_further_on_the_same_budget():
    fixed = create_generator("zsdb3", affine_teacher(), seed=0).generate(6, 5, 80, step=0.2, progress=False)
    grown = create_generator("zsdb3", affine_teacher(), seed=0).generate(6, 5, 80, step=0.2, step_growth=2.0, progress=False)
    assert grown.queries["iterations"] <= 24 * 5 * 80  # same exact per-iteration budget
    assert torch.equal(affine_teacher()(grown.images), grown.labels)
    assert grown.robustness[-1].mean() > 1.2 * fixed.robustness[-1].mean()


def test_mixes_join_the_pool_with_teacher_labels_once(tmp_path):
    oracle = affine_teacher()
    gen = create_generator("zsdb3", oracle, seed=0, start_pool=30, mixes=40)
    out = gen.generate(3, 2, 40, progress=False, out_dir=tmp_path)
    assert out.pool_images.shape[0] == 30 + 40 and out.queries["mixes"] == 40
    assert torch.equal(oracle(out.pool_images), out.pool_labels)
    assert out.pool_images.min() >= 0 and out.pool_images.max() <= 1
    before = oracle.queries
    again = create_generator("zsdb3", oracle, seed=0, start_pool=30, mixes=40).generate(3, 2, 40, progress=False,
                                                                                          out_dir=tmp_path)
    assert oracle.queries == before  # a finished run is read back, not mixed (and paid for) again
    assert torch.equal(again.pool_images, out.pool_images) and again.queries == out.queries
    with pytest.raises(ValueError, match="mixes must be an integer at least 0, got -1"):
        create_generator("zsdb3", oracle, mixes=-1)


def test_cold_generation_restarts_every_search_like_the_reference():
    out = create_generator("zsdb3", affine_teacher(), seed=0, warm_start=False).generate(4, 3, 60, progress=False)
    assert out.warm_starts == 0
    assert torch.equal(affine_teacher()(out.images), out.labels)


def test_a_class_the_teacher_never_answers_warns_and_ends():
    oracle = affine_teacher(dead_class=2)
    gen = create_generator("zsdb3", oracle, seed=0, init_batch=256, max_init_queries=2048)
    with pytest.warns(UserWarning, match=r"never answered classes \[2\] .* 2048 queries|2048 queries.*\[2\]"):
        out = gen.generate(4, 1, 40, progress=False)
    assert out.missing_classes == [2] and 2 not in out.labels.tolist()
    assert out.queries["init"] <= 2048


def test_diversity_report_sees_collapse():
    x = torch.rand(10, 1, 4, 4)
    collapsed = torch.cat([x[:1].repeat(5, 1, 1, 1), x[5:]])
    y = torch.tensor([0] * 5 + [1] * 5)
    rep = diversity_report(collapsed, y, 2)
    assert rep[0]["near_duplicate_fraction"] == 1.0 and rep[0]["mean_pairwise_l2"] == 0
    assert rep[1]["near_duplicate_fraction"] == 0.0 and rep[1]["mean_pairwise_l2"] > 0


def test_bad_arguments_are_named():
    oracle = affine_teacher()
    with pytest.raises(ValueError, match="queries_per_iteration"):
        create_generator("zsdb3", oracle).generate(2, 1, 5)
    with pytest.raises(ValueError, match="step_growth must be a finite number in \\[1, inf\\), got 0.5"):
        create_generator("zsdb3", oracle).generate(2, 1, 40, step_growth=0.5)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="step must be a finite number"):
            create_generator("zsdb3", oracle).generate(2, 1, 40, step=bad)
    with pytest.raises(ValueError, match="input_shape"):
        create_generator("zsdb3", LabelOracle.from_callable(lambda x: [0] * len(x), num_classes=3))
    with pytest.raises(ValueError, match="num_classes=3 but the teacher answers 4"):
        create_generator("zsdb3", oracle, num_classes=3)
    with pytest.raises(TypeError, match="unknown boundary search option.*'probs'"):
        create_generator("zsdb3", oracle, search={"probs": 3})
    with pytest.raises(ValueError, match="momentum=nan"):
        create_generator("zsdb3", oracle, search={"momentum": float("nan")})


def _transfer(tmp_path, oracle, zs, labeler="mbd", **lab):
    from db3_timm import LabelingConfig, ZeroShotConfig
    from db3_timm.transfer.build import generate_zero_shot

    return generate_zero_shot(oracle, tmp_path / "ts", ZeroShotConfig(**zs), LabelingConfig(labeler, lab), progress=False)


def test_transfer_set_soft_labels_pseudo_samples_and_keeps_every_answer(tmp_path):
    oracle = affine_teacher()
    pseudo = create_generator("zsdb3", oracle, seed=0).generate(4, 2, 40, progress=False)
    before = oracle.queries
    ts = _transfer(tmp_path, oracle, {"samples_per_class": 4, "iterations": 2, "queries_per_iteration": 40},
                   queries_per_target=60)
    rows = ts.tensors()
    soft = rows["kd_weight"] == 1
    assert torch.equal(rows["label"][soft], pseudo.labels) and torch.equal(rows["image"][soft], pseudo.images)
    others = torch.ones(int(soft.sum()), 4, dtype=torch.bool).scatter_(1, pseudo.labels[:, None], False)
    assert torch.all(rows["soft_logits"][soft][others] < 0)  # z = -distance: every other class was reached
    # Every query is counted and kept as a row: the generation's and the labelling's.
    assert ts.queries["zsdb3"] == sum(pseudo.queries.values()) and ts.queries["mbd_pseudo"] > 0
    assert ts.queries["total"] == oracle.queries - before == int((~soft).sum())
    grid = ts.folder / "grids" / "all-classes.png"
    assert grid.is_file() and (ts.folder / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    assert Image.open(grid).height >= 4 * 56  # one upscaled, labelled row per class


def test_smooth_start_keeps_a_labelled_pool_that_joins_the_transfer_set(tmp_path):
    from db3_timm.generators import reference_noise, smooth_noise

    def roughness(x):  # neighbour difference relative to the spread of the pixels
        return float((x[..., 1:] - x[..., :-1]).abs().mean() / (x - x.mean()).abs().mean())

    g = torch.Generator().manual_seed(0)
    x = smooth_noise(64, (1, 28, 28), g, torch.device("cpu"))
    assert x.min() > 0 and x.max() < 1
    assert roughness(x) < 0.3 * roughness(reference_noise(64, (1, 28, 28), g, torch.device("cpu")))

    oracle = affine_teacher()
    before = oracle.queries
    gen = create_generator("zsdb3", oracle, seed=0, start="smooth", start_pool=300, init_batch=128)
    pseudo = gen.generate(3, 1, 40, progress=False)
    assert torch.equal(oracle(pseudo.images), pseudo.labels)
    assert pseudo.pool_images.shape == (300, 1, 8, 8) and torch.equal(oracle(pseudo.pool_images), pseudo.pool_labels)
    assert pseudo.queries["init"] >= 300 and oracle.queries - before - 12 - 300 == sum(pseudo.queries.values())

    before = oracle.queries
    zs = {"samples_per_class": 3, "iterations": 1, "queries_per_iteration": 40,
          "options": {"start": "smooth", "start_pool": 300, "init_batch": 128}}
    ts = _transfer(tmp_path, oracle, zs, labeler="sd")
    rows = ts.tensors()
    # Every start-search answer is a training row (the pool and more); sd labels the pseudo samples for free.
    start = ts.rows.filter(lambda r: r["unit"] == "zsdb3-00000")
    assert len(start) == pseudo.queries["init"] >= 300
    assert oracle.queries - before == sum(pseudo.queries.values()) == ts.queries["total"]
    assert ts.queries.get("sd_pseudo", 0) == 0 and int((rows["kd_weight"] == 1).sum()) == 12
    assert sorted(set(ts.rows["source"])) == ["sd_pseudo", "zsdb3"]
    # Rerunning reads the finished set back: nothing is asked again.
    before = oracle.queries
    again = _transfer(tmp_path, oracle, zs, labeler="sd")
    assert oracle.queries == before and again.queries == ts.queries
    with pytest.raises(ValueError, match="start must be one of .*'plaid'"):
        create_generator("zsdb3", oracle, start="plaid")
