"""TRL's reward conventions: dotted import paths and model names as `reward_funcs` strings, `async def` rewards
run concurrently, `log_metric` / `log_extra`, and the failing completion named when it appears several times."""

import asyncio
import sys
import textwrap
import time

import pytest
import torch
from PIL import Image

from clip_trl.rewards import ClipScoreReward, RewardSet, call_reward, get_reward_function, reward_name

BUILT_INS = "caption_similarity, confidence_correctness, correctness, graded_group"


# ------------------------------------------------------------------------------------------- dotted paths


@pytest.fixture()
def rewards_module(tmp_path, monkeypatch):
    """A `my_rewards.py` in a fresh current folder that is not on sys.path (a script's folder, as on the CLI)."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            THRESHOLD = 3

            def short_caption(completions, **kwargs):
                return [float(len(c.split()) <= THRESHOLD) for c in completions]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return tmp_path


def test_a_dotted_path_is_imported_from_the_current_folder(rewards_module):
    func = get_reward_function("my_rewards.short_caption")
    assert func(["a cat", "a very long caption here"]) == [1.0, 0.0]
    assert reward_name(func) == "short_caption"
    scores = RewardSet(["correctness", "my_rewards.short_caption"])(["a cat"], ground_truth=["a dog"])
    assert scores.names == ["correctness", "short_caption"]
    assert scores.total.tolist() == [1.0]


def test_a_dotted_path_error_says_which_part_is_missing(rewards_module):
    with pytest.raises(
        ValueError,
        match=r"module 'nowhere\.rewards', attribute 'f'\), but no module named 'nowhere' can be imported .*"
        rf"Built-in rewards: {BUILT_INS}\.",
    ):
        get_reward_function("nowhere.rewards.f")
    with pytest.raises(
        ValueError,
        match=rf"module 'my_rewards' \(.*my_rewards\.py\) has no attribute 'long_caption'\. Its functions: "
        rf"short_caption\. Built-in rewards: {BUILT_INS}\.",
    ):
        get_reward_function("my_rewards.long_caption")
    with pytest.raises(TypeError, match=r"my_rewards\.THRESHOLD is a int, not a callable"):
        get_reward_function("my_rewards.THRESHOLD")


def test_a_module_whose_own_import_fails_is_not_reported_as_missing(rewards_module):
    (rewards_module / "broken_rewards.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):
        get_reward_function("broken_rewards.f")


def test_the_rl_script_takes_a_dotted_path(rewards_module):
    """`--reward_funcs my_rewards.short_caption`, parsed the way examples/rl.py and `clip-trl rl` parse it."""
    from trl import ModelConfig, TrlParser

    from clip_trl import ClipRLConfig
    from clip_trl.scripts.arguments import RLScriptArguments

    parser = TrlParser((RLScriptArguments, ClipRLConfig, ModelConfig))
    script_args, _, _ = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(rewards_module / "out"),
            "--reward_funcs",
            "correctness",
            "my_rewards.short_caption",
        ]
    )
    assert RewardSet(list(script_args.reward_funcs)).names == ["correctness", "short_caption"]


# ----------------------------------------------------------------------------------------- model strings


def test_a_model_folder_becomes_a_clip_score_teacher(tmp_path, tiny):
    model, processor = tiny
    folder = tmp_path / "teacher_clip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    reward = get_reward_function(str(folder))
    assert isinstance(reward, ClipScoreReward)
    assert reward_name(reward) == "teacher_clip"
    images = [Image.new("RGB", (32, 32), "red")] * 2
    texts = ["a red square", "a cat"]
    assert reward(texts, images=images) == pytest.approx(
        ClipScoreReward(model, processor)(texts, images=images)
    )
    assert RewardSet(["correctness", str(folder)]).names == ["correctness", "teacher_clip"]


def test_a_model_name_that_cannot_be_loaded_says_how_to_pass_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RuntimeError, match=r"'nobody/no-such-clip' names a model \(a hub id\).*ClipScoreReward"
    ):
        get_reward_function("nobody/no-such-clip")
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ValueError, match="is a path but not a model folder"):
        get_reward_function(str(tmp_path / "not_a_model"))


# ------------------------------------------------------------------------------------------- async rewards


async def slow_one(completions, **kwargs):
    await asyncio.sleep(0.2)
    return [1.0] * len(completions)


async def slow_length(completions, **kwargs):
    await asyncio.sleep(0.2)
    return [float(len(c)) for c in completions]


def test_async_rewards_run_concurrently_and_score_right():
    rewards = RewardSet([slow_one, slow_length, "correctness"])
    start = time.perf_counter()
    scores = rewards(["a cat", "dog"], ground_truth=["a cat", "a cat"])
    elapsed = time.perf_counter() - start
    assert elapsed < 0.35  # the two 0.2 s sleeps overlap (sequentially: 0.4 s)
    assert scores.per_function.tolist() == [[1.0, 5.0, 1.0], [1.0, 3.0, 0.0]]
    assert scores.total.tolist() == [7.0, 4.0]


def test_async_rewards_inside_a_running_event_loop():
    """A notebook already runs a loop in the main thread: the rewards' own loop still serves them."""

    async def main():
        return RewardSet([slow_one])(["a", "b"]).total.tolist()

    assert asyncio.run(main()) == [1.0, 1.0]


def test_a_raising_async_reward_names_the_completion():
    async def picky(completions, **kwargs):
        await asyncio.sleep(0)
        for completion in completions:
            if completion == "bad":
                raise KeyError("score")
        return [0.0] * len(completions)

    message = r"Reward function 'picky' raised KeyError: 'score' at index 1 \(completion 'bad'\)"
    with pytest.raises(RuntimeError, match=message):
        RewardSet([slow_one, picky])(["ok", "bad"])
    with pytest.raises(RuntimeError, match=message):
        call_reward(picky, "picky", ["ok", "bad"], {})


# ------------------------------------------------------------------------------------ log_metric, log_extra


def test_log_metric_and_log_extra_reach_the_scores():
    def length(completions, log_metric, log_extra, **kwargs):
        lengths = [len(c) for c in completions]
        log_metric("max_length", max(lengths))
        log_metric("max_length", 0)  # two calls in one step: their mean
        log_extra("length", lengths)
        return [float(n) for n in lengths]

    async def judged(completions, **kwargs):
        kwargs["log_metric"]("calls", 1)
        return [0.0] * len(completions)

    scores = RewardSet([length, judged])(["a cat", "a"])
    metrics = scores.metrics()
    assert metrics["rewards/length/max_length"].item() == 2.5
    assert metrics["rewards/judged/calls"].item() == 1.0
    assert scores.extra_columns == {"length": [5, 1]}


def test_log_kwargs_go_only_to_rewards_that_accept_them():
    seen = {}

    def strict(completions, ground_truth=None):
        return [0.0] * len(completions)

    def metric_only(completions, ground_truth=None, log_metric=None):
        seen["metric_only"] = log_metric is not None
        return [0.0] * len(completions)

    scores = RewardSet([strict, metric_only])(["a"], ground_truth=["a"])
    assert seen == {"metric_only": True}
    assert scores.per_function.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda kw: kw["log_metric"]("mean", 1.0), r"'logger' called log_metric with name 'mean'"),
        (
            lambda kw: kw["log_metric"]("x", float("nan")),
            r"called log_metric\('x', nan\); log one finite number",
        ),
        (lambda kw: kw["log_metric"]("x", torch.ones(2)), r"a tensor of shape \(2,\); log one number"),
        (
            lambda kw: kw["log_extra"]("col", [1]),
            r"log_extra\('col', \.\.\.\) with 1 values for 2 completions",
        ),
        (lambda kw: kw["log_extra"]("col", "ab"), r"log_extra\('col', \.\.\.\) with a str"),
    ],
)
def test_log_misuse_is_an_error_naming_the_reward(call, message):
    def logger(completions, **kwargs):
        call(kwargs)
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match=message):
        RewardSet([logger])(["a", "b"])


def test_two_rewards_logging_one_column_is_an_error():
    def first(completions, log_extra, **kwargs):
        log_extra("note", ["x"] * len(completions))
        return [0.0] * len(completions)

    def second(completions, log_extra, **kwargs):
        log_extra("note", ["y"] * len(completions))
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="reward function 'first' already logged that column"):
        RewardSet([first, second])(["a"])


# ------------------------------------------------------------------------------- repeated failing completion


def test_a_failing_completion_repeated_in_the_batch_is_named_at_its_first_index():
    def picky(completions, **kwargs):
        for completion in completions:
            if completion == "bad":
                raise ValueError("no")
        return [0.0] * len(completions)

    bad = "bad"  # one object at several indices, as the trainer passes every sample of one candidate
    with pytest.raises(RuntimeError) as info:
        call_reward(picky, "picky", ["ok", bad, "fine", bad, bad], {})
    assert str(info.value).startswith(
        "Reward function 'picky' raised ValueError: no at index 1 (completion 'bad', also at indices 3, 4), "
        "while scoring 5 completions."
    )
    with pytest.raises(RuntimeError, match=r"at index 1 \(completion 'bad', also at indices 3, 4\)"):
        RewardSet([picky])(["ok", bad, "fine", bad, bad])
