import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clip_trl import ClipContrastiveConfig, ClipRLConfig
from clip_trl.cli import main, make_parser, parse_dataclasses
from clip_trl.scripts.arguments import RLScriptArguments, ScriptArguments
from clip_trl.scripts.common import clip_peft_config
from clip_trl.scripts.pipeline import PipelineArguments

REPO = Path(__file__).resolve().parents[2]


def _as_dict(parsed):
    values = parsed.to_dict() if hasattr(parsed, "to_dict") else dataclasses.asdict(parsed)
    values.pop("logging_dir", None)  # may hold a time stamp
    return values


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("contrastive", "rl", "evaluate", "pipeline", "env"):
        assert command in out


def test_command_help_lists_the_dataclass_flags_and_config(capsys):
    with pytest.raises(SystemExit) as info:
        main(["rl", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--reward_funcs",
        "--dataset_name",
        "--num_samples",
        "--model_name_or_path",
        "--use_peft",
        "--lora_r",
        "--config",
    ):
        assert flag in out, flag


def test_flags_and_yaml_give_the_same_arguments(tmp_path):
    values = {
        "dataset_name": "some/dataset",
        "max_train_samples": 100,
        "output_dir": str(tmp_path / "out"),
        "learning_rate": 3e-4,
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 16,
        "loss_type": "siglip",
        "freeze_text": True,
        "model_name_or_path": "openai/clip-vit-base-patch32",
        "use_peft": True,
        "lora_r": 8,
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    flags = []
    for key, value in values.items():
        flags += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    from_flags = parse_dataclasses(make_parser("contrastive"), flags)
    from_yaml = parse_dataclasses(make_parser("contrastive"), ["--config", str(config)])
    assert [type(x) for x in from_flags] == [ScriptArguments, ClipContrastiveConfig, type(from_flags[2])]
    for parsed_flags, parsed_yaml in zip(from_flags, from_yaml):
        assert _as_dict(parsed_flags) == _as_dict(parsed_yaml)
    script_args, training_args, model_args = from_yaml
    assert script_args.dataset_name == "some/dataset" and script_args.max_train_samples == 100
    assert (
        training_args.learning_rate == 3e-4
        and training_args.loss_type == "siglip"
        and training_args.freeze_text
    )
    assert model_args.use_peft and model_args.lora_r == 8


def test_command_line_overrides_the_config_file(tmp_path):
    config = tmp_path / "rl.yaml"
    config.write_text(
        yaml.safe_dump({"output_dir": str(tmp_path), "learning_rate": 1e-4, "reward_funcs": ["correctness"]})
    )
    script_args, training_args, _ = parse_dataclasses(
        make_parser("rl"),
        [
            "--config",
            str(config),
            "--learning_rate",
            "5e-4",
            "--reward_funcs",
            "correctness",
            "confidence_correctness",
        ],
    )
    assert isinstance(script_args, RLScriptArguments) and isinstance(training_args, ClipRLConfig)
    assert training_args.learning_rate == 5e-4
    assert script_args.reward_funcs == ["correctness", "confidence_correctness"]


@pytest.mark.parametrize("command", ["contrastive", "rl", "evaluate", "pipeline"])
def test_unknown_flag_is_an_argparse_error_naming_it(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--learning_rat", "1e-4"] if command != "pipeline" else [command, "--epochs", "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err
    assert ("--learning_rat" if command != "pipeline" else "--epochs") in err
    assert err.startswith("usage: clip-trl " + command)


def test_bad_value_and_unknown_config_key_are_argparse_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rl", "--advantage", "ppo"])
    assert info.value.code == 2
    assert "--advantage" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 1.0e-4\nlearnig_rate_typo: 3\n")
    with pytest.raises(SystemExit) as info:
        main(["contrastive", "--config", str(config)])
    assert info.value.code == 2
    assert "learnig_rate_typo" in capsys.readouterr().err


def test_dataclass_validation_errors_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["rl", "--num_samples", "1", "--advantage", "grpo"])
    assert info.value.code == 2
    assert "num_samples" in capsys.readouterr().err


def test_unknown_command_and_no_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err
    assert main([]) == 2


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in (
        "clip_trl version",
        "PyTorch version",
        "Transformers version",
        "TRL version",
        "Datasets version",
    ):
        assert name in out


def test_shipped_configs_parse_without_unknown_keys():
    for command, name in (("contrastive", "contrastive.yaml"), ("rl", "rl.yaml")):
        parsed = parse_dataclasses(
            make_parser(command), ["--config", str(REPO / "examples" / "configs" / name)]
        )
        assert len(parsed) == 3
        assert parsed[1].learning_rate >= 1e-4  # tuned for the offline random model
    script_args, training_args, _ = parse_dataclasses(
        make_parser("rl"), ["--config", str(REPO / "examples" / "configs" / "rl.yaml")]
    )
    assert script_args.contrastive_model_dir == "clip_finetuned" and script_args.reward_funcs == [
        "graded_group"
    ]
    # The same RL recipe as the pipeline's default stage.
    from clip_trl.offline.recipes import DEFAULT_RL

    assert (training_args.advantage, training_args.beta, training_args.learning_rate) == (
        DEFAULT_RL["advantage"],
        DEFAULT_RL["beta"],
        DEFAULT_RL["learning_rate"],
    )


def test_pipeline_flags():
    (args,) = parse_dataclasses(
        make_parser("pipeline"),
        [
            "--output_dir",
            "o",
            "--model",
            "m",
            "--dataset",
            "d",
            "--seed",
            "3",
            "--contrastive_epochs",
            "2",
            "--rl_epochs",
            "1",
            "--quick",
        ],
    )
    assert isinstance(args, PipelineArguments)
    assert (args.model, args.dataset, args.seed, args.contrastive_epochs, args.rl_epochs) == (
        "m",
        "d",
        3,
        2.0,
        1.0,
    )
    assert args.max_train_samples == 64  # --quick fills what was left at the default
    assert args.offline_model_size == "tiny"


def test_peft_flags_become_a_lora_config_for_clip():
    *_, model_args = parse_dataclasses(
        make_parser("contrastive"), ["--use_peft", "--lora_r", "4", "--lora_alpha", "8"]
    )
    config = clip_peft_config(model_args)
    assert config.r == 4 and config.lora_alpha == 8
    assert config.target_modules is None and config.task_type is None  # the trainer picks them per tower
    *_, model_args = parse_dataclasses(make_parser("contrastive"), [])
    assert clip_peft_config(model_args) is None


def test_peft_flags_adapt_both_towers_of_a_bert_text_tower(tmp_path, caplog):
    # AltCLIP's text tower names its projections `query`/`value`: `--use_peft` alone must reach it too (it used
    # to default to q_proj/v_proj, which adapted the vision tower only, with a warning).
    import os
    import sys

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    from clip_trl.models.lora import warn_on_missed_towers

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from zoo_models import ZOO_BY_NAME

    *_, model_args = parse_dataclasses(make_parser("contrastive"), ["--use_peft", "--lora_r", "2"])
    entry = ZOO_BY_NAME["AltCLIPModel"]
    with caplog.at_level("WARNING"):
        trainer = ClipContrastiveTrainer(
            model=entry.build_model(),
            processing_class=entry.build_processor(),
            args=ClipContrastiveConfig(output_dir=str(tmp_path), report_to="none"),
            peft_config=clip_peft_config(model_args),
        )
    assert warn_on_missed_towers(trainer.model) == []
    assert "match no module" not in caplog.text
    assert set(trainer.model.peft_config["default"].target_modules) == {"q_proj", "v_proj", "query", "value"}


def test_contrastive_then_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "c"
    common = ["--offline_model_size", "tiny", "--max_train_samples", "32", "--max_eval_samples", "16"]
    status = main(
        [
            "contrastive",
            *common,
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--learning_rate",
            "1e-3",
            "--per_device_train_batch_size",
            "8",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )
    assert status == 0
    assert (out / "config.json").is_file() and (out / "base_model" / "config.json").is_file()
    test_results = json.loads((out / "test_results.json").read_text())
    assert "test_image_to_text_recall@1" in test_results
    assert "test_image_to_text_recall@1" in capsys.readouterr().out
    metrics_file = tmp_path / "metrics.json"
    status = main(
        [
            "evaluate",
            *common,
            "--model_name_or_path",
            str(out),
            "--output_file",
            str(metrics_file),
            "--reward_funcs",
            "correctness",
            "confidence_correctness",
        ]
    )
    assert status == 0
    metrics = json.loads(metrics_file.read_text())
    assert {
        "image_to_text_recall@10",
        "in_batch_accuracy",
        "mean_reward",
        "rewards/confidence_correctness/mean",
    } <= set(metrics)


def test_rl_command_trains_the_missing_contrastive_model_only_when_asked(tmp_path, capsys):
    contrastive_dir = tmp_path / "clip_finetuned"
    command = [
        "rl",
        "--offline_model_size",
        "tiny",
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--contrastive_model_dir",
        str(contrastive_dir),
        "--output_dir",
        str(tmp_path / "rl"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--num_samples",
        "4",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    assert main(command) == 1  # no hidden second training run: a user error that says what to do
    assert "holds no contrastive model to start RL from" in capsys.readouterr().err
    assert not contrastive_dir.exists()
    status = main([*command, "--train_missing_contrastive", "true"])
    assert status == 0
    assert (contrastive_dir / "model.safetensors").is_file()
    assert (tmp_path / "rl" / "model.safetensors").is_file()
    assert (tmp_path / "rl" / "test_results.json").is_file()


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "clip_trl.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("clip_trl ")
    result = subprocess.run(
        [sys.executable, "examples/rl.py", "--bogus"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2 and "--bogus" in result.stderr
