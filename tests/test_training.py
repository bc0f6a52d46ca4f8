"""The DB3KD objective, the timm training task, the in-memory trainer and the Parquet export."""
import math

import pytest
import torch

import db3_timm  # noqa: F401  (registers the paper's architectures)
from db3_timm._preprocess import PixelTransform
from db3_timm.training import DB3DistillationTask, evaluate, fit, kd_loss, kd_loss_terms, split_kd_target


pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(row, t=1.0):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _hand_kd(s, y, z, t, ce_w, kd_w):
    """CE(s, y) + T^2 KL(softmax(z/T) || softmax(s/T)), both averaged over the batch, in plain Python."""
    ce = sum(-math.log(_softmax(row)[label]) for row, label in zip(s, y)) / len(s)
    kl = 0.0
    for row_s, row_z in zip(s, z):
        p, q = _softmax(row_z, t), _softmax(row_s, t)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    kl = kl / len(s) * t * t
    return ce, kl, ce_w * ce + kd_w * kl


S = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]
Y = [0, 1]
Z = [[40.0, 5.0, 10.0], [2.0, 60.0, 30.0]]


@pytest.mark.parametrize("t, ce_w, kd_w", [(20.0, 1.0, 1.0), (4.0, 0.3, 0.7), (1.0, 1.0, 0.0)])
def test_kd_loss_equals_hand_computation(t, ce_w, kd_w):
    ce, kl, total = _hand_kd(S, Y, Z, t, ce_w, kd_w)
    s, y, z = torch.tensor(S, dtype=torch.float64), torch.tensor(Y), torch.tensor(Z, dtype=torch.float64)
    assert float(kd_loss(s, y, z, temperature=t, ce_weight=ce_w, kd_weight=kd_w)) == pytest.approx(total, rel=1e-12)
    got_ce, got_kl = kd_loss_terms(s, y, z, temperature=t)
    assert float(got_ce) == pytest.approx(ce, rel=1e-12) and float(got_kl) == pytest.approx(kl, rel=1e-12)
    assert float(kd_loss(s, y, None)) == pytest.approx(ce, rel=1e-12)  # no soft labels: plain CE
    # Without the T^2 factor the KL term shrinks by exactly T^2.
    _, unscaled = kd_loss_terms(s, y, z, temperature=t, scale_by_t2=False)
    assert float(unscaled) * t * t == pytest.approx(kl, rel=1e-12)


class _Fixed(torch.nn.Module):
    """A 'student' whose output is a learnable copy of fixed logits (so the loss is the hand-computed one)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))
        self.num_classes = len(logits[0])

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_task_returns_timm_dict_with_kd_loss_values():
    ce, kl, _ = _hand_kd(S, Y, Z, 20.0, 1.0, 1.0)
    x = torch.zeros(2, 1, 2, 2)
    task = DB3DistillationTask(_Fixed(S), temperature=20.0, task_loss_weight=0.25, distill_loss_weight=2.0)
    torch.set_grad_enabled(False)
    try:
        _check_task_outputs(task, x, ce, kl)
    finally:
        torch.set_grad_enabled(True)


def _check_task_outputs(task, x, ce, kl):
    for target in [(torch.tensor(Y), torch.tensor(Z)), {"label": torch.tensor(Y), "soft_logits": torch.tensor(Z)}]:
        out = task(x, target)
        assert set(out) == {"loss", "output", "task_loss", "kd_loss"}
        assert float(out["task_loss"]) == pytest.approx(ce, rel=1e-5)
        assert float(out["kd_loss"]) == pytest.approx(kl, rel=1e-5)
        assert float(out["loss"]) == pytest.approx(0.25 * ce + 2.0 * kl, rel=1e-5)
        assert torch.equal(out["output"], torch.tensor(S))
        expected = kd_loss(torch.tensor(S), torch.tensor(Y), torch.tensor(Z), temperature=20.0, ce_weight=0.25, kd_weight=2.0)
        assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    plain = task(x, torch.tensor(Y))  # labels only: CE, zero KD term
    assert float(plain["kd_loss"]) == 0.0 and float(plain["loss"]) == pytest.approx(0.25 * ce, rel=1e-5)


def test_task_weight_modes_follow_logit_distillation_task():
    m = _Fixed(S)
    both = DB3DistillationTask(m)
    assert (both.task_loss_weight, both.distill_loss_weight) == (1.0, 1.0)
    comp = DB3DistillationTask(m, task_loss_weight=0.3)
    assert comp.task_loss_weight == 0.3 and comp.distill_loss_weight == pytest.approx(0.7)
    indep = DB3DistillationTask(m, distill_loss_weight=5.0)
    assert (indep.task_loss_weight, indep.distill_loss_weight) == (1.0, 5.0)
    assert DB3DistillationTask(m).temperature == 20.0
    with pytest.raises(ValueError, match="temperature"):
        DB3DistillationTask(m, temperature=0)


def test_split_kd_target_forms():
    y, z = torch.tensor([1]), torch.zeros(1, 3)
    w = torch.ones(1)
    assert split_kd_target(y) == (y, None, None)
    assert split_kd_target((y, z))[1] is z and split_kd_target([y, None])[1] is None
    assert split_kd_target({"labels": y, "logits": z})[1] is z
    assert split_kd_target((y, z, w))[2] is w and split_kd_target({"label": y, "soft_logits": z, "kd_weight": w})[2] is w
    with pytest.raises(KeyError, match="no labels"):
        split_kd_target({"soft_logits": z})
    with pytest.raises(TypeError, match="target must be"):
        split_kd_target(3)


def test_per_row_kd_weights_leave_hard_rows_out_of_the_kl():
    s, y, z = torch.tensor(S, dtype=torch.float64), torch.tensor(Y), torch.tensor(Z, dtype=torch.float64)
    ce, kl_both, _ = _hand_kd(S, Y, Z, 4.0, 1.0, 1.0)
    _, kl_first, _ = _hand_kd(S[:1], Y[:1], Z[:1], 4.0, 1.0, 1.0)
    # Row 2 is a hard-label row (weight 0): the KL is row 1's, averaged over both rows.
    got = kd_loss(s, y, z, temperature=4.0, kd_weight=torch.tensor([1.0, 0.0]))
    assert float(got) == pytest.approx(ce + kl_first / 2, rel=1e-12)
    assert float(kd_loss(s, y, z, temperature=4.0, kd_weight=torch.ones(2))) == pytest.approx(ce + kl_both, rel=1e-12)
    task = DB3DistillationTask(_Fixed(S), temperature=4.0).double()
    out = task(torch.zeros(2, 1, 2, 2), (y, z, torch.tensor([1.0, 0.0])))
    assert float(out["loss"].detach()) == pytest.approx(ce + kl_first / 2, rel=1e-6)  # the task computes in float32


def test_task_plugs_into_timm_task_api():
    import timm
    from timm.task import TrainingTask

    student = timm.create_model("alexnet_cifar_quarter")  # BatchNorm + dropout: train/eval mode matters
    task = DB3DistillationTask(student)
    assert isinstance(task, TrainingTask)
    assert task.get_trainable_module() is student and task.get_eval_model() is student
    assert list(task.get_clip_parameters()) == list(student.parameters())
    task.train()
    assert student.training and all(m.training for m in student.modules())
    task.eval()
    assert not student.training and not any(m.training for m in student.modules())
    state = task.get_checkpoint_state()
    assert set(state["state_dict"]) == set(student.state_dict())  # timm checkpoints hold the bare student
    task.load_checkpoint_state(state["state_dict"])
    assert task.prepare_distributed is not TrainingTask.prepare_distributed
    task.to(torch.float64)
    assert task.dtype == torch.float64 and next(student.parameters()).dtype == torch.float64


def test_optimisation_steps_reduce_the_loss():
    import timm

    torch.manual_seed(0)
    student = timm.create_model("lenet5_fifth")
    task = DB3DistillationTask(student, normalize_input=True).train()
    x = torch.rand(32, 1, 28, 28)
    z = torch.randn(32, 10) * 10
    y = z.argmax(1)  # soft labels that agree with the teacher labels, as DB3 soft labels do
    opt = torch.optim.Adam(task.get_trainable_module().parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        out = task(x, (y, z))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["loss"].detach()) if first is None else first
    assert float(task(x, (y, z))["loss"].detach()) < 0.7 * first  # one fixed batch: memorised fast
    # normalize_input=True is the student's own mean/std normalisation of pixel-space input.
    with torch.no_grad():
        a = task(x, y)["output"]
        b = student(PixelTransform.for_model(student, resize_to_model="never")(x))
    assert torch.allclose(a, b, atol=1e-6)


def test_prepare_distributed_wraps_the_student_in_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        student = _Fixed(S)
        task = DB3DistillationTask(student).prepare_distributed()
        assert isinstance(task.trainable_module, DDP) and task.trainable_module.module is student
        out = task(torch.zeros(2, 1, 2, 2), (torch.tensor(Y), torch.tensor(Z)))
        out["loss"].backward()
        assert student.logits.grad is not None
        assert set(task.get_checkpoint_state()["state_dict"]) == {"logits"}  # unwrapped: no 'module.' prefix
        with task.no_sync():
            pass
    finally:
        dist.destroy_process_group()


def test_fit_and_evaluate_keep_their_signatures():
    import timm

    torch.manual_seed(0)
    x = torch.rand(40, 1, 28, 28)
    y = (x.mean((1, 2, 3)) > x.mean()).long()
    model = fit(timm.create_model("lenet5_fifth", num_classes=2), x, y, torch.randn(40, 2), epochs=2, batch_size=16, seed=0)
    assert not model.training and 0.0 <= evaluate(model, x, y) <= 1.0


def test_fit_on_epoch_sees_every_epoch_without_changing_the_run():
    import timm

    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = (x.mean((1, 2, 3)) > x.mean()).long()

    def train(on_epoch=None):
        torch.manual_seed(0)
        model = timm.create_model("lenet5_fifth", num_classes=2)
        return fit(model, x, y, epochs=3, batch_size=16, seed=0, on_epoch=on_epoch)

    seen = []
    # A validation pass inside the callback puts the model in eval mode; training must go on unchanged.
    watched = train(lambda epoch, m: seen.append((epoch, evaluate(m, x, y))))
    plain = train()
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == evaluate(plain, x, y)
    for a, b in zip(watched.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
