import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_trl.losses.policy import (
    entropy,
    exact_policy_loss,
    group_advantages,
    kl_divergence,
    policy_log_probs,
    rl_loss,
    sample_actions,
)

nan = float("nan")


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, nan, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = group_advantages(rewards, "grpo", scale_rewards=True, eps=0.0)
    s = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1) and of (1, 0, 0)
    expected = torch.tensor(
        [
            [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s],
            [(2 / 3) / s, 0.0, (-1 / 3) / s, (-1 / 3) / s],  # the None action is excluded, advantage 0
            [0.0, 0.0, 0.0, 0.0],  # zero std: no signal
        ]
    )
    torch.testing.assert_close(advantages, expected)


def test_grpo_without_scaling_is_mean_centred():
    rewards = torch.tensor([[3.0, 1.0, nan]])
    torch.testing.assert_close(
        group_advantages(rewards, "grpo", scale_rewards=False), torch.tensor([[1.0, -1.0, 0.0]])
    )


def test_rloo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, nan, 0.0, 0.0], [2.0, nan, nan, nan]])
    expected = torch.tensor(
        [
            [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3],
            [1 - 0.0, 0.0, 0 - 0.5, 0 - 0.5],
            [0.0, 0.0, 0.0, 0.0],  # a single valid sample has no leave-one-out baseline
        ]
    )
    torch.testing.assert_close(group_advantages(rewards, "rloo"), expected)


def test_unknown_advantage_is_an_error():
    with pytest.raises(ValueError, match="Unknown advantage 'ppo'"):
        group_advantages(torch.zeros(1, 2), "ppo")


def test_exact_loss_gradient_is_the_analytic_policy_gradient():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 1.0]], dtype=torch.float64)
    temperature = 0.7
    loss = exact_policy_loss(policy_log_probs(logits, None, temperature), rewards)
    loss.backward()
    probs = (logits.detach() / temperature).softmax(-1)
    expected_reward = (probs * rewards).sum(-1, keepdim=True)
    # d E[r] / d z_k = π_k (r_k - E[r]) / τ ; the loss is -mean over the 2 queries.
    analytic = -probs * (rewards - expected_reward) / temperature / 2
    torch.testing.assert_close(logits.grad, analytic)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_exact_loss_ignores_masked_and_none_candidates():
    logits = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    rewards = torch.tensor([[1.0, 0.0, nan]], dtype=torch.float64)
    exact_policy_loss(policy_log_probs(logits, mask, 1.0), rewards).backward()
    p = torch.softmax(torch.tensor([0.1, 0.2], dtype=torch.float64), 0)
    j = p[0] * 1.0
    expected = -torch.stack([p[0] * (1 - j), p[1] * (0 - j), torch.tensor(0.0, dtype=torch.float64)])
    torch.testing.assert_close(logits.grad[0], expected)


def test_kl_by_hand_and_zero_against_itself():
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    log_q = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert kl_divergence(log_p, log_q).item() == pytest.approx(expected, abs=1e-6)
    assert kl_divergence(log_p, log_p).item() == 0.0


def test_masked_candidates_do_not_count_in_entropy_or_kl():
    mask = torch.tensor([[True, True, False]])
    log_probs = policy_log_probs(torch.zeros(1, 3), mask, 1.0)
    assert entropy(log_probs).item() == pytest.approx(math.log(2))
    assert (
        kl_divergence(log_probs, policy_log_probs(torch.tensor([[0.0, 0.0, 5.0]]), mask, 1.0)).item() == 0.0
    )


def test_sampled_loss_by_hand_and_sampling_respects_the_mask():
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    log_probs = policy_log_probs(logits, mask, 1.0)
    actions = sample_actions(log_probs, 200, torch.Generator().manual_seed(0))
    assert set(actions.flatten().tolist()) <= {0, 1}
    actions = torch.tensor([[0, 1, 1]])
    rewards = torch.tensor([[1.0, 0.0, nan]])
    advantages = torch.tensor([[0.5, -0.5, 0.0]])
    out = rl_loss(log_probs, actions=actions, advantages=advantages, rewards=rewards, entropy_coef=0.0)
    expected = -(0.5 * log_probs[0, 0] - 0.5 * log_probs[0, 1]) / 2  # two scored actions
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_rl_loss_adds_kl_and_entropy_terms():
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    out = rl_loss(
        log_probs,
        actions=None,
        advantages=None,
        rewards=rewards,
        ref_log_probs=ref,
        beta=0.1,
        entropy_coef=0.01,
    )
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    kl = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert out.loss.item() == pytest.approx(0.0 + 0.1 * kl - 0.01 * h, abs=1e-6)
    assert out.kl.item() == pytest.approx(kl, abs=1e-6)
    assert out.entropy.item() == pytest.approx(h, abs=1e-6)


rewards_strategy = st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=8)


@settings(max_examples=50, deadline=None)
@given(rewards=rewards_strategy, shift=st.floats(-10, 10), mode=st.sampled_from(["grpo", "rloo"]))
def test_advantages_are_invariant_to_a_constant_shift(rewards, shift, mode):
    r = torch.tensor([rewards], dtype=torch.float64)
    torch.testing.assert_close(
        group_advantages(r + shift, mode), group_advantages(r, mode), atol=1e-6, rtol=1e-6
    )


@settings(max_examples=50, deadline=None)
@given(logits=st.lists(st.floats(-5, 5), min_size=2, max_size=6), value=st.floats(-3, 3))
def test_exact_gradient_is_zero_when_all_rewards_are_equal(logits, value):
    z = torch.tensor([logits], dtype=torch.float64, requires_grad=True)
    exact_policy_loss(policy_log_probs(z, None, 1.0), torch.full_like(z, value)).backward()
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-12)
