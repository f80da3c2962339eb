"""clip_trl.losses.distillation against hand computations (explicit softmaxes, KLs and logs)."""

import math

import pytest
import torch

from clip_trl.losses.distillation import (
    distillation_loss,
    distillation_losses,
    normalized_weights,
    teacher_targets,
)


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_soft_loss_is_t_squared_kl_of_the_tempered_softmaxes():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[4.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    T = 2.0
    expected = [
        T**2 * kl(softmax([t / T for t in trow]), softmax([s / T for s in srow]))
        for srow, trow in zip(student.tolist(), teacher.tolist())
    ]
    # by hand, row 0: p = softmax(2, 1, 0) = (0.6652, 0.2447, 0.0900), q = softmax(1, 0, -0.5)
    assert expected[0] == pytest.approx(
        4
        * (
            0.66524 * math.log(0.66524 / 0.62853)
            + 0.24473 * math.log(0.24473 / 0.23122)
            + 0.09003 * math.log(0.09003 / 0.14024)
        ),
        abs=1e-4,
    )
    got = distillation_loss(student, teacher, temperature=T)
    assert float(got) == pytest.approx(sum(expected) / 2, rel=1e-5)
    # The T² factor: the same softmaxes at T = 1 with logits already divided by T give a loss 4 times smaller.
    plain = distillation_loss(student / T, teacher / T, temperature=1.0)
    assert float(got) == pytest.approx(4 * float(plain), rel=1e-5)


def test_masked_candidates_leave_both_softmaxes():
    student = torch.tensor([[1.0, 0.0, 50.0]])
    teacher = torch.tensor([[0.0, 1.0, -50.0]])
    mask = torch.tensor([[True, True, False]])
    expected = kl(softmax([0.0, 1.0]), softmax([1.0, 0.0]))
    assert float(distillation_loss(student, teacher, mask)) == pytest.approx(expected, rel=1e-5)


def test_text_to_image_direction_is_the_column_softmax():
    # The trainer distils text→image by passing the transposed similarity matrix: each text's softmax over images.
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])  # 3 images × 2 texts
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    columns = [kl(softmax(teacher[:, j].tolist()), softmax(logits[:, j].tolist())) for j in range(2)]
    assert float(distillation_loss(logits.T, teacher.T)) == pytest.approx(sum(columns) / 2, rel=1e-5)


def test_hard_mode_is_cross_entropy_toward_the_teachers_top_candidate_untempered():
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.1, 3.0]])  # top candidate: 2
    expected = -math.log(softmax([1.0, 2.0, 0.0])[2])
    for T in (1.0, 5.0):  # the temperature changes neither the argmax nor the student's softmax
        got = distillation_loss(student, teacher, temperature=T, target="hard")
        assert float(got) == pytest.approx(expected, rel=1e-5)


def test_teachers_mix_their_softmaxes_with_normalised_weights():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mixed = teacher_targets([a, b], weights=[3.0, 1.0])
    pa, pb = softmax([2.0, 0.0]), softmax([0.0, 2.0])
    expected = [0.75 * x + 0.25 * y for x, y in zip(pa, pb)]
    assert mixed[0].tolist() == pytest.approx(expected, rel=1e-5)
    student = torch.tensor([[0.3, -0.2]])
    loss = distillation_loss(student, [a, b], teacher_weights=[3.0, 1.0])
    assert float(loss) == pytest.approx(kl(expected, softmax([0.3, -0.2])), rel=1e-5)
    # Hard mode takes the mixture's argmax: weights [1, 3] flip it to candidate 1.
    hard = distillation_losses(student, teacher_targets([a, b], weights=[1.0, 3.0]), target="hard")
    assert float(hard) == pytest.approx(-math.log(softmax([0.3, -0.2])[1]), rel=1e-5)


def test_identical_distributions_give_zero_and_gradients_flow_to_the_student_only():
    student = torch.tensor([[0.2, 0.4, 0.1]], requires_grad=True)
    teacher = torch.tensor([[0.2, 0.4, 0.1]], requires_grad=True)
    loss = distillation_loss(student, teacher, temperature=3.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)
    assert teacher.grad is None  # targets are constants
    assert student.grad is not None


def test_bad_weights_and_targets_are_named():
    with pytest.raises(
        ValueError, match=r"^1 teacher weight\(s\) for 2 teacher\(s\); give one weight per teacher\.$"
    ):
        normalized_weights([1.0], 2)
    with pytest.raises(ValueError, match=r"non-negative with a positive sum, got \[0\.0, 0\.0\]"):
        normalized_weights([0.0, 0.0], 2)
    with pytest.raises(ValueError, match=r"`target` must be one of \('soft', 'hard'\), got 'kl'\."):
        distillation_losses(torch.zeros(1, 2), torch.full((1, 2), 0.5), target="kl")
