import functools
import math

import pytest
import torch
from clip_test_utils import colour_dataset
from transformers import TrainerCallback

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.models.modeling import encode_pair
from clip_trl.rewards import correctness


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


def with_extra_column(dataset):
    return dataset.add_column("difficulty", [i % 3 for i in range(len(dataset))])


class Recorder:
    """A reward that records what it receives and pays 1 for the ground truth."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, completions, **kwargs):
        self.calls.append((list(completions), kwargs))
        return [1.0 if c == g else 0.0 for c, g in zip(completions, kwargs["ground_truth"])]


def test_reward_receives_every_documented_kwarg_aligned(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    train = with_extra_column(emoji["train"].select(range(16)))
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=train,
        processing_class=processor,
    )
    trainer.train()
    completions, kwargs = recorder.calls[0]
    n = 8 * 4  # queries × samples
    assert len(completions) == n
    for key in [
        "images",
        "candidates",
        "chosen",
        "probs",
        "ground_truth",
        "difficulty",
        "codepoints",
        "caption",
    ]:
        assert len(kwargs[key]) == n, key
    assert kwargs["trainer_state"] is trainer.state
    captions_in_batch = set(kwargs["ground_truth"])
    for i in range(n):
        assert kwargs["candidates"][i][kwargs["chosen"][i]] == completions[i]
        assert set(kwargs["candidates"][i]) == captions_in_batch  # in-batch candidates
        assert 0.0 < kwargs["probs"][i] <= 1.0
        assert kwargs["images"][i].mode == "RGB"
        assert kwargs["ground_truth"][i] == kwargs["caption"][i]
    # The extra column travels with its row: each sample of a query sees that row's value.
    by_truth = {}
    for truth, difficulty in zip(kwargs["ground_truth"], kwargs["difficulty"]):
        by_truth.setdefault(truth, set()).add(difficulty)
    assert all(len(values) == 1 for values in by_truth.values())


def test_logged_metrics_have_the_documented_names(tmp_path, tiny, emoji):
    model, processor = tiny
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=["correctness", functools.partial(Recorder()), correctness],
        args=make_args(tmp_path, max_steps=2),
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    for name in [
        "loss",
        "reward",
        "reward_std",
        "rewards/correctness/mean",
        "rewards/correctness/std",
        "rewards/recorder/mean",
        "rewards/recorder/std",
        "rewards/correctness_2/mean",
        "rewards/correctness/expected",
        "objective",
        "kl",
        "entropy",
        "accuracy",
        "frac_reward_zero_std",
    ]:
        assert name in logged, name


def test_beta_zero_builds_no_reference_model(tmp_path, tiny, emoji):
    model, processor = tiny
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs="correctness",
        args=make_args(tmp_path, beta=0.0),
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    assert trainer.ref_model is None


def expected_correctness(model, processor, dataset):
    """E_π[correct] over in-batch candidates of one fixed batch of 16 rows."""
    rows = [dataset[i] for i in range(16)]
    captions = [r["caption"] for r in rows]
    inputs = processor(
        text=captions,
        images=[r["image"].convert("RGBA").convert("RGB") for r in rows],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        images, texts = encode_pair(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        )
        probs = (model.logit_scale.exp() * images @ texts.T).softmax(-1)
    return probs.diagonal().mean().item()


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "exact"])
def test_correctness_reward_rises_and_every_parameter_changes(tmp_path, tiny, emoji, advantage):
    model, processor = tiny
    train = emoji["train"].select(range(16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reward_before = expected_correctness(model, processor, train)
    args = make_args(
        tmp_path,
        max_steps=40,
        per_device_train_batch_size=16,
        advantage=advantage,
        num_samples=8,
        beta=0.0,
        learning_rate=1e-3,
        logging_steps=10,
    )
    trainer = ClipRLTrainer(
        model=model, reward_funcs="correctness", args=args, train_dataset=train, processing_class=processor
    )
    trainer.train()
    reward_after = expected_correctness(model, processor, train)
    # From a random init, E[correct] starts near 1/16; measured 0.19-0.25 after 40 steps (seed 0).
    assert reward_after > 2.5 * reward_before, (reward_before, reward_after)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert unchanged == []


def test_resume_continues_with_the_same_step_weights_and_reference(tmp_path, emoji):
    from clip_trl.offline import build_clip

    train = emoji["train"].select(range(32))

    class StopAt(TrainerCallback):  # an interruption after step 2 of a 4-step run (same LR schedule)
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output_dir, resume=None, callbacks=None):
        model, processor = build_clip("tiny", seed=0)
        args = make_args(
            tmp_path, output_dir=str(output_dir), max_steps=4, save_strategy="steps", save_steps=2, beta=0.1
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
    interrupted = run(tmp_path / "part", callbacks=[StopAt()])
    assert interrupted.state.global_step == 2
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == [1, 2, 3, 4]
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    initial, _ = build_clip("tiny", seed=0)
    for a, b in zip(initial.parameters(), resumed.ref_model.parameters()):
        assert torch.equal(a, b)


def test_candidate_column_and_label_candidate_sets(tmp_path, tiny):
    model, processor = tiny
    data = colour_dataset(["red", "green", "blue", "black"] * 2)
    data = data.add_column(
        "options", [["red", "green", "pink"], ["green", "blue"], ["blue", "red"], ["black", "red"]] * 2
    )
    recorder = Recorder()
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        train_dataset=data,
        processing_class=processor,
        args=make_args(tmp_path, candidate_column="options", max_steps=1),
    )
    assert trainer.args.candidates == "column"
    trainer.train()
    _, kwargs = recorder.calls[0]
    assert all(
        c in (["red", "green", "pink"], ["green", "blue"], ["blue", "red"], ["black", "red"])
        for c in kwargs["candidates"]
    )

    labels = ["cat", "dog", "bird"]
    labelled = colour_dataset(["x"] * 6).add_column("label", [0, 1, 2, 2, 1, 0])
    recorder = Recorder()
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        train_dataset=labelled,
        processing_class=processor,
        args=make_args(tmp_path, candidate_labels=labels, max_steps=1, per_device_train_batch_size=6),
    )
    trainer.train()
    completions, kwargs = recorder.calls[0]
    assert set(completions) <= set(labels)  # completions are label names, not templated prompts
    assert kwargs["candidates"][0] == labels
    assert sorted(set(kwargs["ground_truth"])) == sorted(labels)
    # ... while the texts the policy scored travel beside them, aligned.
    prompts = [f"a photo of a {label}." for label in labels]
    assert kwargs["candidate_texts"] == [prompts] * len(completions)
    assert kwargs["chosen_text"] == [f"a photo of a {c}." for c in completions]
    assert kwargs["chosen_row"] == [None] * len(completions)  # label candidates come from no row


def test_rewards_see_the_chosen_candidates_row(tmp_path, tiny):
    model, processor = tiny
    captions = ["red apple", "green apple", "red car", "blue car", "pear", "bus"]
    groups = ["fruit", "fruit", "vehicle", "vehicle", "fruit", "vehicle"]
    data = colour_dataset(captions).add_column("group", groups)

    def same_group(completions, group, chosen_row, **kwargs):
        return [float(row["group"] == g) for row, g in zip(chosen_row, group, strict=True)]

    recorder = Recorder()
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=[recorder, same_group],
        train_dataset=data,
        processing_class=processor,
        args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=6),
    )
    trainer.train()
    completions, kwargs = recorder.calls[0]
    group_of = dict(zip(captions, groups))
    for completion, row in zip(completions, kwargs["chosen_row"], strict=True):
        assert row == {"caption": completion, "group": group_of[completion]}  # the chosen caption's own row
    assert kwargs["chosen_text"] == completions  # in-batch captions are scored as they are
    expected = sum(group_of[c] == g for c, g in zip(completions, kwargs["group"])) / len(completions)
    assert trainer.state.log_history[0]["rewards/same_group/mean"] == pytest.approx(expected)


def test_text_to_image_direction(tmp_path, tiny, emoji):
    model, processor = tiny
    recorder = Recorder()
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=recorder,
        train_dataset=emoji["train"],
        processing_class=processor,
        args=make_args(tmp_path, direction="text_to_image", max_steps=1),
    )
    trainer.train()
    completions, kwargs = recorder.calls[0]
    assert len(kwargs["images"]) == len(completions) == 32
    # The chosen image is the one named by the completion (an image is named by its caption; emoji captions are
    # unique), and it is the chosen candidate.
    from clip_trl.data.rows import image_key, load_image

    by_caption = {
        row["caption"]: image_key(load_image(row["image"], row=i, column="image"))
        for i, row in enumerate(emoji["train"])
    }
    assert [image_key(image) for image in kwargs["images"]] == [by_caption[c] for c in completions]
    assert [
        candidates[chosen] for candidates, chosen in zip(kwargs["candidates"], kwargs["chosen"])
    ] == completions
    # Not every action chose its own query's image, so the check above is not the ground truth in disguise.
    assert completions != kwargs["ground_truth"]


def test_none_rewards_are_excluded(tmp_path, tiny, emoji, monkeypatch):
    # Rewards that differ between actions, `None` on every other sample: the advantages must be computed over
    # each query's valid samples only. Scoring `None` as 0 (or averaging it in) gives other advantages.
    model, processor = tiny
    returned = []

    def graded(completions, **kwargs):
        values = [None if i % 2 else float(len(c) % 7) for i, c in enumerate(completions)]
        returned.append(values)
        return values

    def never(completions, **kwargs):
        return [None] * len(completions)

    from clip_trl.trainer import rl_trainer

    advantages = []
    original = rl_trainer.group_advantages
    monkeypatch.setattr(
        rl_trainer, "group_advantages", lambda *a, **k: advantages.append(original(*a, **k)) or advantages[-1]
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=[graded, never],
        train_dataset=emoji["train"],
        processing_class=processor,
        args=make_args(tmp_path, max_steps=1),
    )
    trainer.train()
    values = torch.tensor([math.nan if v is None else v for v in returned[0]]).view(
        8, 4
    )  # 8 queries x 4 samples
    expected = torch.zeros(8, 4)
    for row in range(8):
        valid = values[row, ::2]  # samples 0 and 2 were scored
        if valid[0] != valid[1]:
            expected[row, ::2] = (valid - valid.mean()) / (valid.std() + 1e-4)
    assert expected.abs().sum() > 0  # some groups carry signal
    torch.testing.assert_close(advantages[0].cpu(), expected, atol=1e-5, rtol=1e-5)
    logged = trainer.state.log_history[0]
    assert logged["rewards/graded/mean"] == pytest.approx(float(values[~values.isnan()].mean()), abs=1e-5)
    assert "rewards/never/mean" not in logged
    assert math.isfinite(logged["loss"])


def bad_length(completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def bad_type(completions, **kwargs):
    return ["good"] + [0.0] * (len(completions) - 1)


def bad_nan(completions, **kwargs):
    return [0.0, 0.0, float("nan")] + [0.0] * (len(completions) - 3)


def bad_inf(completions, **kwargs):
    return [0.0] * 5 + [float("inf")] + [0.0] * (len(completions) - 6)


def bad_raise(completions, **kwargs):
    if "the joker" in kwargs["difficulty"]:
        raise KeyError("score")
    return [0.0] * len(completions)


def bad_scalar(completions, **kwargs):
    return 1.0


@pytest.mark.parametrize(
    ("func", "error", "message"),
    [
        (bad_length, ValueError, "Reward function 'bad_length' returned 31 rewards for 32 completions"),
        (bad_type, ValueError, "Reward function 'bad_type' returned 'good' (str) at index 0"),
        (bad_nan, ValueError, "Reward function 'bad_nan' returned nan at index 2"),
        (bad_inf, ValueError, "Reward function 'bad_inf' returned inf at index 5"),
        (
            bad_raise,
            RuntimeError,
            "Reward function 'bad_raise' raised KeyError: 'score' on the batch, while scoring",
        ),
        (bad_scalar, ValueError, "Reward function 'bad_scalar' returned a float; it must return a list"),
    ],
)
def test_reward_errors_name_the_function_and_index(tmp_path, tiny, emoji, func, error, message):
    model, processor = tiny
    train = emoji["train"].add_column("difficulty", ["easy"] + ["the joker"] * (len(emoji["train"]) - 1))
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=func,
        train_dataset=train,
        processing_class=processor,
        args=make_args(tmp_path, max_steps=1),
    )
    with pytest.raises(error) as info:
        trainer.train()
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_samples=1), "`num_samples=1` gives advantage='grpo' no group to compare against"),
        (dict(advantage="ppo"), "`advantage` must be one of ('grpo', 'rloo', 'exact'), got 'ppo'."),
        (dict(direction="text_to_image", candidate_column="x"), "`direction='text_to_image'` chooses among"),
        (
            dict(per_device_train_batch_size=1),
            "In-batch candidates need `per_device_train_batch_size` of at least 2",
        ),
        (dict(candidate_labels=["only"]), "`candidates='labels'` needs `candidate_labels` with at least 2"),
    ],
)
def test_config_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError) as info:
        make_args(tmp_path, **overrides)
    assert str(info.value).startswith(message)


def test_reward_setup_errors(tmp_path, tiny, emoji):
    model, processor = tiny
    with pytest.raises(ValueError, match="`reward_funcs` is empty"):
        ClipRLTrainer(
            model=model,
            reward_funcs=[],
            train_dataset=emoji["train"],
            processing_class=processor,
            args=make_args(tmp_path),
        )
    with pytest.raises(ValueError, match="`reward_weights` has 2 entries but there are 1 reward functions"):
        ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            train_dataset=emoji["train"],
            processing_class=processor,
            args=make_args(tmp_path, reward_weights=[1.0, 2.0]),
        )
    with pytest.raises(ValueError, match="Unknown reward function 'accuracy'"):
        ClipRLTrainer(
            model=model,
            reward_funcs="accuracy",
            train_dataset=emoji["train"],
            processing_class=processor,
            args=make_args(tmp_path),
        )


def test_candidate_column_with_one_candidate_names_the_row(tmp_path, tiny):
    model, processor = tiny
    data = colour_dataset(["a", "b", "c", "d"]).add_column(
        "options", [["a", "b"], ["b", "b"], ["c", "a"], ["d", "a"]]
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs="correctness",
        train_dataset=data,
        processing_class=processor,
        args=make_args(tmp_path, candidate_column="options", per_device_train_batch_size=4, max_steps=1),
    )
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value).startswith(
        "Row 1, column 'options': a candidate set needs at least 2 distinct captions, got ['b']"
    )


def test_iterable_dataset_trains(tmp_path, tiny, emoji):
    model, processor = tiny
    stream = emoji["train"].to_iterable_dataset()
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs="correctness",
        train_dataset=stream,
        processing_class=processor,
        args=make_args(tmp_path, max_steps=2),
    )
    trainer.train()
    assert trainer.state.global_step == 2


def test_a_raising_reward_is_called_once_and_the_failing_completion_is_named():
    from clip_trl.rewards import call_reward

    calls = []

    def picky(completions, **kwargs):
        calls.append(len(completions))
        for completion in completions:
            if completion == "bad":
                raise ValueError("no")
        return [0.0] * len(completions)

    with pytest.raises(RuntimeError) as info:
        call_reward(picky, "picky", ["ok", "fine", "bad"], {"trainer_state": None})
    assert calls == [3]  # never re-called one completion at a time (a teacher model would pay for each)
    assert str(info.value).startswith(
        "Reward function 'picky' raised ValueError: no at index 2 (completion 'bad')"
    )
    # The same object at two indices cannot be told apart: the first is named, the other listed.
    with pytest.raises(
        RuntimeError, match=r"raised ValueError: no at index 0 \(completion 'bad', also at index 2\)"
    ):
        bad = "bad"
        call_reward(picky, "picky", [bad, "fine", bad], {"trainer_state": None})


def test_same_seed_gives_the_same_weights(tmp_path, emoji):
    from clip_trl.offline import build_clip

    def run(name):
        model, processor = build_clip("tiny", seed=0)
        trainer = ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            train_dataset=emoji["train"],
            processing_class=processor,
            args=make_args(tmp_path / name, max_steps=3, beta=0.1),
        )
        trainer.train()
        return model.state_dict()

    first, second = run("a"), run("b")
    assert all(torch.equal(first[k], second[k]) for k in first)
