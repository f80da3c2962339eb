"""What the RL trainer logs about the policy: each reward's expectation under π and the objective (#28), and
what rewards log themselves (`log_metric`, `log_extra`)."""

import asyncio
import math
import types

import pandas as pd
import pytest
import torch
from clip_test_utils import colour_dataset

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.losses.policy import PolicyLoss
from clip_trl.rewards import RewardScores
from clip_trl.trainer.rl_metrics import step_metrics

CAPTIONS = ["red square", "blue square", "green square", "a long yellow square"]


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        advantage="exact",
    )
    return ClipRLConfig(**{**defaults, **overrides})


def short_only(completions, **kwargs):
    """A reward that applies to short captions only (None elsewhere): 1 per word."""
    return [float(len(c.split())) if len(c.split()) <= 2 else None for c in completions]


def test_step_metrics_by_hand():
    nan = math.nan
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.8, 0.0]])
    log_probs = probs.log()  # the masked candidate of query 1 is -inf
    entries = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    per_function = torch.tensor([[1.0, 2.0], [0.0, nan], [0.0, 4.0], [0.0, nan], [1.0, nan]])
    total = torch.tensor([3.0, 0.0, 4.0, 0.0, 1.0])
    rewards = torch.tensor([[3.0, 0.0, 4.0], [0.0, 1.0, nan]])
    rollout = types.SimpleNamespace(
        actions=None,
        rewards=rewards,
        entries=entries,
        scores=RewardScores(total=total, per_function=per_function, names=["a", "b"]),
    )
    out = PolicyLoss(
        loss=torch.tensor(0.0), policy_loss=torch.tensor(0.0), kl=torch.tensor(0.5), entropy=torch.tensor(0.9)
    )
    metrics = step_metrics(log_probs, rollout, torch.tensor([0, -1]), out, beta=0.1, entropy_coef=0.01)
    # E_π[total]: query 0: .5·3 + .25·0 + .25·4 = 2.5; query 1: .2·0 + .8·1 = 0.8
    assert metrics["reward"].item() == pytest.approx((2.5 + 0.8) / 2)
    assert metrics["reward_std"].item() == pytest.approx(0.85)
    # reward a: query 0 .5, query 1 .8; reward b only applies to query 0's candidates 0 and 2 (renormalised)
    assert metrics["rewards/a/expected"].item() == pytest.approx((0.5 + 0.8) / 2)
    assert metrics["rewards/b/expected"].item() == pytest.approx((0.5 * 2 + 0.25 * 4) / 0.75)
    assert metrics["objective"].item() == pytest.approx(1.65 - 0.1 * 0.5 + 0.01 * 0.9)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # π(target) of the one query with a target


def test_exact_metrics_equal_a_hand_computation_from_the_policy(tmp_path, tiny):
    model, processor = tiny
    data = colour_dataset(CAPTIONS)
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=["correctness", short_only],
        args=make_args(tmp_path, entropy_coef=0.05, reward_weights=[1.0, 0.5]),
        train_dataset=data,
        processing_class=processor,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    candidates, truths = batch["candidates"], batch["ground_truth"]
    model.train()
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    probs = outputs["log_probs"].exp().tolist()
    recorded = {name: values[-1].item() for name, values in trainer._metrics.items()}

    expected_correct, expected_short, expected_total, entropies = [], [], [], []
    for p, names, truth in zip(probs, candidates, truths):
        p = p[: len(names)]
        expected_correct.append(sum(pk * (c == truth) for pk, c in zip(p, names)))
        short = [(pk, len(c.split())) for pk, c in zip(p, names) if len(c.split()) <= 2]
        expected_short.append(sum(pk * r for pk, r in short) / sum(pk for pk, _ in short))
        totals = [(c == truth) + (0.5 * len(c.split()) if len(c.split()) <= 2 else 0.0) for c in names]
        expected_total.append(sum(pk * r for pk, r in zip(p, totals)))
        entropies.append(-sum(pk * math.log(pk) for pk in p))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert recorded["rewards/correctness/expected"] == pytest.approx(mean(expected_correct), abs=1e-5)
    assert recorded["rewards/short_only/expected"] == pytest.approx(mean(expected_short), abs=1e-5)
    assert recorded["reward"] == pytest.approx(mean(expected_total), abs=1e-5)
    assert recorded["accuracy"] == pytest.approx(mean(expected_correct), abs=1e-5)
    assert recorded["objective"] == pytest.approx(mean(expected_total) + 0.05 * mean(entropies), abs=1e-5)
    # The plain means weigh every candidate alike: they do not depend on π.
    assert recorded["rewards/correctness/mean"] == pytest.approx(4 / 16)
    assert recorded["policy_loss"] == pytest.approx(0.0, abs=1e-6)  # 0 by construction; its gradient is not
    # The reference is the policy's starting copy; its embeddings come through the reference cache (the towers
    # called directly), so the KL is 0 up to float rounding.
    assert recorded["kl"] == pytest.approx(0.0, abs=1e-6)


class Logging:
    """A reward that logs a metric and a rollout column."""

    __name__ = "logging"

    def __call__(self, completions, log_metric, log_extra, **kwargs):
        words = [len(c.split()) for c in completions]
        log_metric("words", sum(words) / len(words))
        log_extra("words", words)
        return [0.0] * len(completions)


async def async_short(completions, **kwargs):
    await asyncio.sleep(0)
    return short_only(completions)


def test_log_metric_and_log_extra_reach_the_logs_and_the_rollout_table(tmp_path, tiny):
    model, processor = tiny
    data = colour_dataset(CAPTIONS)
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=["correctness", Logging(), async_short],
        args=make_args(tmp_path, log_rollouts=True, num_rollouts_to_log=2),
        train_dataset=data,
        processing_class=processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["rewards/async_short/mean"] == pytest.approx(2.0)  # the async reward was awaited (2 words)
    assert logged["rewards/logging/words"] == pytest.approx(sum(len(c.split()) for c in CAPTIONS) / 4)
    table = pd.read_parquet(tmp_path / "out" / "rollouts" / "rollouts_00001.parquet")
    assert (table["words"] == table["choice"].str.split().str.len()).all()
