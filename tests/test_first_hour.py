"""A new user's first hour (issue 19), replayed: the README example as written, a folder holding only
checkpoints, an adapter trained from a relative folder, `reward_weights` passed to the trainer, CLI mistakes,
and what an RL run prints and writes in its card."""

import functools
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import clip_trl.offline
from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.cli import main
from clip_trl.hub import default_lora_config, load_model, local_hub
from clip_trl.offline import build_clip

REPO = Path(__file__).resolve().parents[1]
TINY = dict(report_to="none", use_cpu=True, seed=0, logging_steps=1)


def readme_example():
    """The Python block under the README's "Ten-line example" heading, exactly as shown."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Ten-line example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_readme_example_runs_as_written_and_saves_both_models(tmp_path, monkeypatch, capsys):
    # The block itself takes a few minutes on 2 CPU cores (README says how long); here it runs on a seeded
    # 80-row slice of the same data, and nothing else of it changes.
    monkeypatch.setattr(
        clip_trl.offline,
        "load_emoji_dataset",
        functools.partial(clip_trl.offline.load_emoji_dataset, max_examples=80),
    )
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    assert "save_model()" in code
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "eval_image_to_text_recall@1" in printed
    for folder in ("clip_finetuned", "clip_rl"):
        assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(folder)), folder
    # What the user did next: evaluate the saved RL model with the CLI.
    status = main(
        [
            "evaluate",
            "--model_name_or_path",
            "clip_rl",
            "--max_eval_samples",
            "16",
            "--max_train_samples",
            "16",
            "--output_file",
            "metrics.json",
        ]
    )
    assert status == 0 and "image_to_text_recall@1" in json.loads(Path("metrics.json").read_text())


@pytest.fixture(scope="module")
def only_checkpoints(tmp_path_factory, emoji):
    """A run's output folder after `train()` without `save_model()`: checkpoints, no model."""
    model, processor = build_clip("tiny", seed=0)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path_factory.mktemp("run") / "clip_rl"),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        per_device_train_batch_size=8,
        **TINY,
    )
    ClipContrastiveTrainer(
        model=model, args=args, processing_class=processor, train_dataset=emoji["train"].select(range(16))
    ).train()
    return args.output_dir


def test_load_model_on_a_folder_of_checkpoints_names_the_checkpoint(only_checkpoints):
    expected = os.path.join(only_checkpoints, "checkpoint-2")
    with pytest.raises(FileNotFoundError) as info:
        load_model(only_checkpoints)
    assert str(info.value) == (
        f"No model in {only_checkpoints!r} (no config.json or adapter_config.json); found checkpoint-2 (and 1 "
        f"earlier) — pass that folder: {expected!r}. To have the final model in {only_checkpoints!r}, call "
        "`trainer.save_model()` after `trainer.train()`."
    )
    model, _ = load_model(expected)  # and that folder loads
    assert type(model).__name__ == "CLIPModel"


def test_cli_user_errors_print_one_message_and_exit_nonzero(only_checkpoints, tmp_path, capsys, monkeypatch):
    common = ["--offline_model_size", "tiny", "--max_train_samples", "16", "--max_eval_samples", "8"]
    # A folder of checkpoints. (`clip-trl` is `sys.exit(main())`: the returned status is the exit status.)
    assert main(["evaluate", *common, "--model_name_or_path", only_checkpoints]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"clip-trl evaluate: error: No model in {only_checkpoints!r}")
        and "checkpoint-2" in err
    )
    assert "Traceback" not in err and "--debug" in err
    # A missing column: the library's message, listing the columns there are.
    status = main(
        [
            "contrastive",
            *common,
            "--caption_column",
            "captions",
            "--output_dir",
            str(tmp_path / "c"),
            "--max_steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    error = [line for line in err.splitlines() if "error:" in line]  # after progress bars of the model build
    assert (
        len(error) == 1 and error[0].startswith("clip-trl contrastive: error: ") and "'captions'" in error[0]
    )
    # A data set that does not exist.
    checkpoint = os.path.join(only_checkpoints, "checkpoint-2")
    assert (
        main(
            ["evaluate", "--dataset_name", str(tmp_path / "no-such-data"), "--model_name_or_path", checkpoint]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "no-such-data" in err and "Traceback" not in err
    # The traceback is there on request.
    with pytest.raises(FileNotFoundError):
        main(["evaluate", *common, "--model_name_or_path", only_checkpoints, "--debug"])
    monkeypatch.setenv("CLIP_TRL_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["evaluate", *common, "--model_name_or_path", only_checkpoints])


def test_adapter_from_a_relative_base_folder_warns_and_load_model_names_the_base(
    tmp_path, monkeypatch, emoji
):
    trained_here = tmp_path / "trainer-machine"
    trained_here.mkdir()
    monkeypatch.chdir(trained_here)
    build_clip("tiny", seed=0, output_dir="tiny-clip")
    with local_hub(tmp_path / "hub"):
        args = ClipContrastiveConfig(
            output_dir="lora-run",
            hub_model_id="me/lora-run",
            max_steps=1,
            per_device_train_batch_size=4,
            save_strategy="no",
            **TINY,
        )
        trainer = ClipContrastiveTrainer(
            model="tiny-clip",
            args=args,
            train_dataset=emoji["train"].select(range(4)),
            peft_config=default_lora_config(r=2),
        )
        trainer.train()
        with pytest.warns(
            UserWarning, match=r"names its base model by a local path, 'tiny-clip'.*base_model="
        ):
            trainer.push_to_hub()

        elsewhere = tmp_path / "someone-else"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        with pytest.raises(OSError) as info:
            load_model("me/lora-run")
        message = str(info.value)
        assert message.startswith("The adapter 'me/lora-run' was trained on the base model 'tiny-clip'")
        assert "load_model('me/lora-run', base_model=<Hub id or local folder of that model>)" in message
        model, _ = load_model("me/lora-run", base_model=trained_here / "tiny-clip")
        assert type(model.get_base_model()).__name__ == "CLIPModel"


def test_reward_weights_given_to_the_trainer_says_it_belongs_in_the_config(tiny, emoji, tmp_path):
    model, processor = tiny
    with pytest.raises(TypeError) as info:
        ClipRLTrainer(
            model=model,
            reward_funcs=["correctness", "confidence_correctness"],
            reward_weights=[1.0, 0.5],
            args=ClipRLConfig(output_dir=str(tmp_path), **TINY),
            processing_class=processor,
            train_dataset=emoji["train"].select(range(8)),
        )
    assert str(info.value) == (
        "`reward_weights` is a `ClipRLConfig` field, not a trainer argument: pass "
        "`args=ClipRLConfig(..., reward_weights=[...])` (one weight per reward function)."
    )


def test_rl_example_prints_test_metrics_once_and_its_card_has_final_reward_and_kl(
    tmp_path, capsys, monkeypatch
):
    from trl import ModelConfig

    from clip_trl.scripts import rl as rl_script
    from clip_trl.scripts.arguments import RLScriptArguments

    spec = importlib.util.spec_from_file_location("rl_example", REPO / "examples" / "rl.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trainers = []

    def run_rl(*args, **kwargs):  # the example's own call, keeping the trainer to compare the card with
        trainers.append(rl_script.run_rl(*args, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(example, "run_rl", run_rl)
    build_clip("tiny", seed=0, output_dir=tmp_path / "start")
    # Progress bars on, as in a terminal (with them off, transformers also prints every logged dict).
    args = ClipRLConfig(
        output_dir=str(tmp_path / "rl"),
        max_steps=2,
        per_device_train_batch_size=8,
        num_samples=4,
        save_strategy="no",
        disable_tqdm=False,
        **TINY,
    )
    example.main(
        RLScriptArguments(max_train_samples=32, max_eval_samples=16, reward_funcs=["correctness"]),
        args,
        ModelConfig(model_name_or_path=str(tmp_path / "start")),
    )
    out = capsys.readouterr().out
    assert len(re.findall(r"test_image_to_text_recall@1\b", out)) == 1, out

    last = [entry for entry in trainers[0].state.log_history if "reward" in entry][-1]
    card = ModelCard.load(tmp_path / "rl" / "README.md").text
    expected = (
        f"At the last logging step (step 2), averaged over its actions: mean reward\n{last['reward']:.4f} "
        f"(std {last['reward_std']:.4f}), KL to the reference model {last['kl']:.4g}"
    )
    assert expected in card, card
