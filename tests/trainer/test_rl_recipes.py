"""Options that make RL recipes work: retrieved candidate sets, rollout reuse (`num_iterations`)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.losses.policy import clipped_policy_loss, rl_loss
from clip_trl.models import modeling
from clip_trl.models.encoding import embed_texts
from clip_trl.offline import build_clip
from clip_trl.trainer.rl_candidates import RepeatBatchSampler, resolve_candidate_pool


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=3,
        num_samples=4,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    return ClipRLConfig(**{**defaults, **overrides})


class Recorder:
    """Pays 1 for the ground truth; remembers each call's step, candidate sets, truths and images."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, completions, **kwargs):
        self.calls.append(
            {
                "step": kwargs["trainer_state"].global_step,
                "candidates": kwargs["candidates"],
                "ground_truth": kwargs["ground_truth"],
                "images": kwargs["images"],
                "chosen": kwargs["chosen"],
            }
        )
        return [1.0 if c == g else 0.0 for c, g in zip(completions, kwargs["ground_truth"])]


# ------------------------------------------------------------------------------------------ clipped ratio


def test_clipped_surrogate_matches_a_hand_computation():
    old = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    new = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))  # ratios 1.4, 2/3, 0.5
    actions = torch.tensor([[0, 1, 2, 0]])
    advantages = torch.tensor([[1.0, -1.0, 0.5, -2.0]])
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.0]])
    loss, clipped = clipped_policy_loss(
        new, old, actions=actions, advantages=advantages, rewards=rewards, epsilon_low=0.2, epsilon_high=0.3
    )
    # a=0, A=1: min(1.4, 1.3) = 1.3 | a=1, A=-1: min(-2/3, -0.8) = -0.8 | a=2, A=.5: min(.25, .4) = .25
    # a=0, A=-2: min(-2.8, -2.6) = -2.8
    expected = -(1.3 - 0.8 + 0.25 - 2.8) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert clipped.item() == pytest.approx(1.0)  # every ratio is outside [0.8, 1.3]


@pytest.mark.parametrize("exact", [False, True])
def test_clipped_surrogate_has_the_policy_gradient_at_the_rollout_policy(exact):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 4 + [False], [True] * 3 + [False] * 2])
    log_probs = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    if exact:
        rewards = torch.where(mask, torch.rand(3, 5), torch.full((3, 5), float("nan")))
        actions = advantages = None
    else:
        actions = torch.multinomial(log_probs.detach().exp(), 6, replacement=True)
        rewards = torch.rand(3, 6)
        advantages = rewards - rewards.mean(dim=1, keepdim=True)
    plain = rl_loss(log_probs, actions=actions, advantages=advantages, rewards=rewards).loss
    (expected,) = torch.autograd.grad(plain, logits, retain_graph=True)
    surrogate = rl_loss(
        log_probs, actions=actions, advantages=advantages, rewards=rewards, old_log_probs=log_probs.detach()
    ).loss
    (got,) = torch.autograd.grad(surrogate, logits)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ num_iterations


def test_num_iterations_reuses_each_rollout_and_calls_rewards_once_per_batch(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    args = make_args(tmp_path, max_steps=6, num_iterations=3, epsilon=0.1)
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    trainer.train()
    assert [call["step"] for call in recorder.calls] == [0, 3]  # 6 updates, 2 rollouts
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6 and all("clip_ratio" in entry for entry in logs)
    assert [entry["clip_ratio"] for entry in logs][::3] == [0.0, 0.0]  # ratio 1 on a rollout's first update
    assert any(entry["clip_ratio"] > 0 for entry in logs)  # later updates moved away from π_old and clip
    # Each rollout's rows are served num_iterations times in a row: the sampler repeats whole groups.
    sampler = trainer._get_train_sampler()
    order = list(sampler)
    assert order[:8] == order[8:16] == order[16:24] and order[24:32] != order[:8]


def test_num_iterations_one_equals_the_plain_update_and_two_starts_with_it(tmp_path, tiny, emoji):
    # One batch (8 rows) so every run sees the same rows; exact advantages so that row order does not matter.
    data = emoji["train"].select(range(8))

    def first_step_weights(num_iterations):
        model, processor = build_clip("tiny", seed=0)
        # SGD: Adam would turn float noise in gradients that are zero in exact arithmetic into ±lr steps.
        args = make_args(
            tmp_path,
            max_steps=1,
            advantage="exact",
            num_iterations=num_iterations,
            beta=0.1,
            optim="sgd",
            learning_rate=0.5,
        )
        trainer = ClipRLTrainer(
            model=model, reward_funcs="correctness", args=args, train_dataset=data, processing_class=processor
        )
        trainer.train()
        return trainer.state.log_history[0]["loss"], dict(trainer.model.named_parameters())

    loss_one, one = first_step_weights(1)
    loss_two, two = first_step_weights(2)
    # The clipped surrogate at π = π_old has the plain policy gradient (and the same KL): the same first update.
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, atol=1e-6, rtol=0, msg=name)
    assert loss_one == pytest.approx(loss_two, abs=1e-6)  # exact policy term is 0 in value both ways


def test_num_iterations_resume_matches_an_uninterrupted_run(tmp_path, emoji):
    train = emoji["train"].select(range(32))

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output_dir, resume=None, callbacks=None):
        model, processor = build_clip("tiny", seed=0)
        args = make_args(
            tmp_path,
            output_dir=str(output_dir),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            num_iterations=2,
            beta=0.0,
        )
        trainer = ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            args=args,
            train_dataset=train,
            processing_class=processor,
            callbacks=callbacks,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "part", callbacks=[StopAt()])
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-2"))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_repeat_sampler_needs_one_full_group():
    with pytest.raises(ValueError, match="has only 5 rows"):
        RepeatBatchSampler(5, group_size=8, repeat_count=2, seed=0)


# ------------------------------------------------------------------------------------------ retrieved


def true_top_k(model, processor, images, pool, k):
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        queries = F.normalize(modeling.image_features(model, pixels).float(), dim=-1)
    texts = embed_texts(model, processor.tokenizer, pool, 64)
    return [[pool[i] for i in row] for row in (queries @ texts.T).topk(k, dim=1).indices.tolist()]


def test_retrieved_candidates_are_the_models_top_k_with_the_ground_truth_kept(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    args = make_args(tmp_path, max_steps=1, candidates="retrieved", num_candidates=4, learning_rate=0.0)
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    pool = list(dict.fromkeys(emoji["train"]["caption"]))
    assert trainer.retrieved_candidates.pool == pool
    trainer.train()
    call = recorder.calls[0]
    images = call["images"][:: args.num_samples]  # one entry per sample: take each query once
    sets = call["candidates"][:: args.num_samples]
    truths = call["ground_truth"][:: args.num_samples]
    expected = true_top_k(model, processor, images, pool, 4)
    replaced = 0
    for got, top, truth in zip(sets, expected, truths):
        assert truth in got
        if truth in top:
            assert got == top
        else:  # the least similar candidate gave way to the ground truth
            assert got == top[:3] + [truth]
            replaced += 1
    assert replaced > 0  # an untrained model ranks most truths outside its top 4


def test_retrieved_without_ground_truth_and_from_a_given_pool(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    pool = list(dict.fromkeys(emoji["train"]["caption"]))[:20]
    args = make_args(
        tmp_path,
        max_steps=1,
        candidates="retrieved",
        num_candidates=3,
        candidate_pool=pool,
        include_ground_truth=False,
    )
    ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=emoji["train"],
        processing_class=processor,
    ).train()
    sets = recorder.calls[0]["candidates"]
    assert all(len(s) == 3 and set(s) <= set(pool) for s in sets)
    truths = recorder.calls[0]["ground_truth"]
    assert any(truth not in s for truth, s in zip(truths, sets))


def test_retrieved_pool_refreshes_at_the_right_steps_and_changes(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    refreshes = []
    args = make_args(
        tmp_path,
        max_steps=5,
        candidates="retrieved",
        num_candidates=4,
        candidate_refresh_steps=2,
        learning_rate=5e-3,
        advantage="exact",
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        args=args,
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    pool = trainer.retrieved_candidates
    original_refresh = pool.refresh

    def spy(model, tokenizer, step, device=None):
        refreshes.append(step)
        original_refresh(model, tokenizer, step, device)
        spy.embeds.append(pool.embeds.clone())

    spy.embeds = []
    pool.refresh = spy
    trainer.train()
    assert refreshes == [0, 2, 4]
    assert not torch.allclose(spy.embeds[0], spy.embeds[1])  # re-embedded with the updated model
    # The final index is the model's own embedding of the pool as of step 4's update.
    assert pool.built_at == 4


def test_candidate_pool_errors(tmp_path, tiny, emoji):
    with pytest.raises(ValueError, match="not a column of train_dataset"):
        resolve_candidate_pool("nope", emoji["train"], "caption")
    with pytest.raises(ValueError, match="retrieval needs at least 2"):
        resolve_candidate_pool(["only one", "only one"], None, "caption")
    with pytest.raises(ValueError, match="has no meaning"):
        make_args(tmp_path, candidate_pool=["a", "b"])
    with pytest.raises(ValueError, match="num_candidates"):
        make_args(tmp_path, candidates="retrieved", num_candidates=1)


RUNS = Path(__file__).resolve().parents[1] / "launch_scripts" / "rl_retrieved.py"


@pytest.mark.slow
def test_retrieved_candidate_sets_under_two_processes_equal_one_process(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_retrieved", RUNS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = module.run(8, str(tmp_path / "one"))  # the 1-process reference, in this process
    out = tmp_path / "two.pt"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(RUNS),
        "--per_device_batch",
        "4",
        "--out",
        str(out),
        "--output_dir",
        str(tmp_path / "two"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two = torch.load(out)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # Per (step, row caption): the candidate set. Step 1's sets come from the pool re-embedded after an update.
    assert len(one["sets"]) == 16 and one["sets"] == two["sets"]
    torch.testing.assert_close(two["index"], one["index"], atol=1e-5, rtol=0)
    assert math.isfinite(two["loss"])
