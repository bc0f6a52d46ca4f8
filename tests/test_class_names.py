"""Class names travel: from a timm teacher (or an HTTP one) to warnings, the transfer set and the saved student."""
import datasets
import pytest
import timm
import torch

from db3_timm import DistillConfig, LabelOracle, TrainConfig, ZeroShotConfig, distill_student, plan_queries
from db3_timm.transfer.build import build_transfer_set

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SMALL = {"queries_per_round": 20, "generator_steps": 1, "boundary_steps": 1, "student_steps": 2, "student_batch": 16,
         "student": "lenet5_fifth"}

pytestmark = pytest.mark.usefixtures("one_thread")


class _Never(torch.nn.Module):
    """The wrapped teacher, except that it never answers ``never``."""

    def __init__(self, net, never):
        super().__init__()
        self.net, self.never, self.num_classes, self.pretrained_cfg = net, never, net.num_classes, net.pretrained_cfg

    def forward(self, x):
        out = self.net(x)
        out[:, self.never] = float("-inf")
        return out


def test_a_timm_imagenet_teacher_names_its_classes_and_a_shared_name_stays_distinct():
    oracle = LabelOracle.from_timm_model(timm.create_model("lenet5_fifth", num_classes=1000, in_chans=1))
    names = oracle.class_names
    assert names[:3] == ["tench", "goldfish", "great white shark"] and len(set(names)) == 1000
    assert names[134] == "crane (134)" and names[517] == "crane (517)"  # the bird and the machine
    assert LabelOracle.from_timm_model(timm.create_model("lenet5_fifth", num_classes=10)).class_names is None


@pytest.mark.parametrize("names, words", [(["a", "b"], "3 names"), (["a", "b", "a"], "'a' is given twice"),
                                          ("abc", "a list of names"), (["a", "", "c"], "non-empty strings")])
def test_bad_class_names_are_refused_before_any_query(perturbed_lenet_half, tmp_path, names, words):
    with pytest.raises(ValueError, match=words):
        LabelOracle(lambda x: torch.zeros(len(x), dtype=torch.long), num_classes=3, class_names=names)
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    cfg = DistillConfig(plan="default", zero_shot=ZeroShotConfig(synth=SMALL), evaluate_teacher=False)
    with pytest.raises(ValueError, match="class_names must"):
        build_transfer_set(oracle, plan_queries(oracle, None, cfg, budget=40), tmp_path / "t", class_names=names,
                           progress=False)
    assert oracle.queries == 0


def test_the_teachers_names_reach_the_warning_the_transfer_set_and_the_saved_student(perturbed_lenet_half, tmp_path):
    oracle = LabelOracle.from_timm_model(_Never(perturbed_lenet_half, never=7), class_names=FASHION)
    cfg = DistillConfig(plan="default", zero_shot=ZeroShotConfig(synth=SMALL), train=TrainConfig(epochs=1, batch_size=8),
                        evaluate_teacher=False, val_fraction=0.0)
    with pytest.warns(UserWarning, match="the teacher never answered .*Sneaker.* on 40 synth samples"):
        result = distill_student(oracle, "lenet5_fifth", None, 40, tmp_path / "run", config=cfg, progress=False)
    assert "Sneaker" in result.transfer.info["missing_classes"]
    rows = datasets.load_from_disk(str(tmp_path / "run" / "transfer"))["train"]
    assert rows.features["label"].names == FASHION
    # The student opens with timm and carries the names; as a teacher in turn, it names its classes the same way.
    student = timm.create_model(f"local-dir:{tmp_path / 'run' / 'model'}", pretrained=True)
    assert student.pretrained_cfg["label_names"] == FASHION
    assert LabelOracle.from_timm(f"local-dir:{tmp_path / 'run' / 'model'}").class_names == FASHION


def test_a_teacher_without_names_saves_a_student_without_label_names(perturbed_lenet_half, tmp_path):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    cfg = DistillConfig(plan="noise", train=TrainConfig(epochs=1, batch_size=8), evaluate_teacher=False,
                        val_fraction=0.0)
    distill_student(oracle, "lenet5_fifth", None, 40, tmp_path / "run", config=cfg, progress=False)
    student = timm.create_model(f"local-dir:{tmp_path / 'run' / 'model'}", pretrained=True)
    assert "label_names" not in student.pretrained_cfg
