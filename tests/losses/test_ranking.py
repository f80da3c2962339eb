import itertools
import math

import pytest
import torch

from clip_trl.losses.policy import rl_loss
from clip_trl.losses.ranking import greedy_lists, plackett_luce_log_prob, sample_lists

PROBS = [0.5, 0.3, 0.2]


def test_plackett_luce_log_prob_by_hand():
    log_probs = torch.tensor([PROBS]).log()
    lists = torch.tensor([[[2, 0, 1], [1, 0, 2], [0, 1, 2]]])
    expected = [
        0.2 * (0.5 / 0.8) * 1.0,
        0.3 * (0.5 / 0.7) * 1.0,
        0.5 * (0.3 / 0.5) * 1.0,
    ]
    assert plackett_luce_log_prob(log_probs, lists).exp()[0].tolist() == pytest.approx(expected, abs=1e-6)
    # A prefix of length 2 drops the last (certain) factor: the same numbers here.
    assert plackett_luce_log_prob(log_probs, lists[..., :2]).exp()[0].tolist() == pytest.approx(expected)


def test_masked_candidates_are_left_out_and_gradients_stay_finite():
    logits = torch.tensor([[1.0, 0.0, -1.0, 5.0]], requires_grad=True)
    log_probs = torch.log_softmax(
        logits.masked_fill(torch.tensor([[True, True, True, False]]) == 0, -math.inf), -1
    )
    value = plackett_luce_log_prob(log_probs, torch.tensor([[[1, 0]]]))
    p = torch.softmax(logits[0, :3].detach(), -1)
    assert value.exp().item() == pytest.approx((p[1] * p[0] / (1 - p[1])).item(), rel=1e-5)
    value.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 3] == 0


def test_gumbel_top_k_samples_plackett_luce():
    log_probs = torch.tensor([PROBS]).log()
    lists = sample_lists(log_probs, 40_000, 2, torch.Generator().manual_seed(0))[0]
    assert (lists[:, 0] != lists[:, 1]).all()  # without replacement
    counts = {pair: 0 for pair in itertools.permutations(range(3), 2)}
    for a, b in lists.tolist():
        counts[(a, b)] += 1
    for (a, b), count in counts.items():
        exact = PROBS[a] * PROBS[b] / (1 - PROBS[a])
        assert count / len(lists) == pytest.approx(exact, abs=0.01), (a, b)


def test_sampling_never_draws_masked_candidates_and_names_a_short_query():
    log_probs = torch.tensor([[0.0, 0.0, -math.inf, 0.0], [0.0, -math.inf, -math.inf, 0.0]]).log_softmax(-1)
    lists = sample_lists(log_probs[:1], 200, 3, torch.Generator().manual_seed(1))
    assert not (lists == 2).any()
    with pytest.raises(ValueError, match=r"`list_size=3` but query 1 of the batch has only 2 candidates"):
        sample_lists(log_probs, 4, 3)


def test_rl_loss_with_lists_uses_the_list_log_probability():
    log_probs = torch.tensor([PROBS, [0.1, 0.1, 0.8]]).log().requires_grad_()
    lists = torch.tensor([[[0, 1], [2, 1]], [[2, 0], [1, 2]]])
    advantages = torch.tensor([[1.0, -1.0], [0.5, -0.5]])
    out = rl_loss(log_probs, actions=lists, advantages=advantages, rewards=torch.zeros(2, 2))
    expected = -(advantages * plackett_luce_log_prob(log_probs, lists)).sum() / 4
    assert out.loss.item() == pytest.approx(expected.item())


def test_greedy_lists_are_the_top_scores_in_order():
    assert greedy_lists(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 3).tolist() == [[1, 3, 2]]
