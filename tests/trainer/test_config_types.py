"""The configs check their int / float / bool fields first, naming the field and the type it wants; strings are
read as the command line reads them; the eval batch defaults to the training batch."""

from dataclasses import dataclass, field

import pytest

from clip_trl import ClipContrastiveConfig, ClipDPOConfig, ClipRLConfig


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"learning_rate": "fast"},
            "ClipRLConfig: `learning_rate` must be a float, like its default 1e-05, got 'fast' (str).",
        ),
        (
            {"max_steps": 2.5},
            "ClipRLConfig: `max_steps` must be an integer, like its default -1, got 2.5 (float).",
        ),
        (
            {"num_samples": None},
            "ClipRLConfig: `num_samples` must be an integer, like its default 8, got None (NoneType).",
        ),
        ({"use_cpu": "maybe"}, "ClipRLConfig: `use_cpu` must be a bool (True or False), got 'maybe' (str)."),
        (
            {"weight_decay": True},
            "ClipRLConfig: `weight_decay` must be a float, like its default 0.0, got True (bool).",
        ),
        (
            {"max_logit_scale": "high"},
            "ClipRLConfig: `max_logit_scale` must be a float or None, got 'high' (str).",
        ),
        ({"eval_ks": [1, "ten"]}, "ClipRLConfig: `eval_ks[1]` must be an integer, got 'ten' (str)."),
        (
            {"reward_weights": 2.0},
            "ClipRLConfig: `reward_weights` must be a list of floats or None, got 2.0 (float).",
        ),
    ],
)
def test_a_wrong_type_names_the_field_and_the_type_it_wants(tmp_path, overrides, message):
    with pytest.raises(TypeError) as raised:
        ClipRLConfig(output_dir=str(tmp_path), **overrides)
    assert str(raised.value) == message


def test_numeric_strings_are_read_as_the_command_line_reads_them(tmp_path):
    args = ClipRLConfig(
        output_dir=str(tmp_path),
        learning_rate="1e-4",  # PyYAML reads `1e-4` (no dot) as a string
        max_steps="3",
        use_cpu="true",
        skip_bad_rows="0",
        eval_ks=["1", 5],
        max_logit_scale="50",
    )
    assert (args.learning_rate, args.max_steps, args.use_cpu, args.skip_bad_rows) == (1e-4, 3, True, False)
    assert args.eval_ks == [1, 5] and args.max_logit_scale == 50.0
    assert isinstance(args.learning_rate, float) and isinstance(args.max_steps, int)
    assert ClipRLConfig(output_dir=str(tmp_path), max_steps=10.0).max_steps == 10  # a whole float is its int


def test_a_subclass_field_is_checked_from_its_annotation(tmp_path):
    @dataclass
    class MyConfig(ClipContrastiveConfig):
        warm_restarts: int = field(default=2)

    assert MyConfig(output_dir=str(tmp_path), warm_restarts="4").warm_restarts == 4
    with pytest.raises(
        TypeError,
        match=r"^MyConfig: `warm_restarts` must be an integer, like its default 2, got 'x' \(str\)\.$",
    ):
        MyConfig(output_dir=str(tmp_path), warm_restarts="x")
    with pytest.raises(
        TypeError, match=r"^ClipDPOConfig: `seed` must be an integer, like its default 42, got 'abc'"
    ):
        ClipDPOConfig(output_dir=str(tmp_path), seed="abc")


def test_the_eval_batch_defaults_to_the_training_batch(tmp_path):
    assert (
        ClipContrastiveConfig(
            output_dir=str(tmp_path), per_device_train_batch_size=64
        ).per_device_eval_batch_size
        == 64
    )
    assert (
        ClipRLConfig(output_dir=str(tmp_path)).per_device_eval_batch_size == 8
    )  # TrainingArguments' train default
    given = ClipContrastiveConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=64, per_device_eval_batch_size=4
    )
    assert given.per_device_eval_batch_size == 4


def test_the_command_line_default_of_the_eval_batch_is_the_training_batch(tmp_path):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ClipContrastiveConfig)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--per_device_train_batch_size", "12"]
    )
    assert args.per_device_eval_batch_size == 12
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--per_device_eval_batch_size", "5"]
    )
    assert args.per_device_eval_batch_size == 5
