import json

import datasets
import pytest
import torch
from clip_test_utils import colour_dataset
from PIL import Image

from clip_trl.cli import main
from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
from clip_trl.evaluation.scores import in_batch_accuracy_from_embeddings
from clip_trl.offline import build_clip
from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.data import load_data
from clip_trl.scripts.pipeline import STAGES
from clip_trl.scripts.pipeline_results import greedy_rewards, results_table

METRICS = [
    "image_to_text_recall@1",
    "image_to_text_recall@5",
    "image_to_text_recall@10",
    "text_to_image_recall@1",
    "text_to_image_recall@5",
    "text_to_image_recall@10",
    "in_batch_accuracy",
    "mean_reward",
]


def check_outputs(out, results):
    for name in ("results.json", "results.md", "retrieval_examples.png"):
        assert (out / name).is_file(), name
    for folder in ("clip_finetuned", "clip_rl_finetuned"):
        for name in (
            "config.json",
            "model.safetensors",
            "processor_config.json",
            "tokenizer.json",
            "README.md",
        ):
            assert (out / folder / name).is_file(), f"{folder}/{name}"
    assert list(results["stages"]) == list(STAGES)
    for stage in STAGES:
        for metric in METRICS:
            assert 0.0 <= results["stages"][stage][metric] <= 1.0, (stage, metric)
    # Validation ran every epoch of both training stages.
    for stage in ("contrastive", "contrastive+rl"):
        assert any("eval_image_to_text_recall@1" in entry for entry in results["validation_history"][stage])
    markdown = (out / "results.md").read_text()
    assert "| contrastive+rl |" in markdown and "retrieval_examples.png" in markdown
    for picture in results["pictures"].values():
        if picture:
            assert (out / picture).is_file() and picture in markdown
    with Image.open(out / "retrieval_examples.png") as image:
        assert image.width >= 600 and image.height >= 300
    # Each stage's card carries the test metrics of results.md (split `test`) beside the validation ones.
    from huggingface_hub import ModelCard

    for folder, stage in (("clip_finetuned", "contrastive"), ("clip_rl_finetuned", "contrastive+rl")):
        card = ModelCard.load(out / folder / "README.md")
        test = {r.metric_name: r.metric_value for r in card.data.eval_results if r.dataset_split == "test"}
        assert test["image_to_text_recall@1"] == results["stages"][stage]["image_to_text_recall@1"], folder
        assert {r.dataset_split for r in card.data.eval_results} == {"test", "validation"}
        value = results["stages"][stage]["in_batch_accuracy"]
        assert f"| test | in_batch_accuracy | {value:.4f} |" in card.text
        assert "`test`, the held-out test split" in card.text


def test_quick_pipeline_on_the_offline_default(tmp_path, capsys):
    out = tmp_path / "run"
    # Its wall time is a benchmark's business (`benchmarks/check_claims.py --pipeline`), not a test's.
    assert main(["pipeline", "--quick", "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    check_outputs(out, results)
    assert (out / "base_model" / "config.json").is_file()
    assert results["data"] == {"train_rows": 64, "validation_rows": 32, "test_rows": 32, "test_captions": 32}
    # The offline default has a `group` column: RL grades by it, and the table shows that metric.
    assert results["rewards"] == ["graded_group"]
    assert all(0.0 <= results["stages"][stage]["graded_reward"] <= 1.0 for stage in STAGES)
    assert "graded reward" in (out / "results.md").read_text()
    assert "| base |" in capsys.readouterr().out


def test_pipeline_takes_a_model_folder_and_a_dataset_folder(tmp_path):
    # The code path of `--model openai/clip-vit-base-patch32 --dataset <hub id>`, offline: local folders.
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    build_clip("tiny", seed=1, output_dir=model_dir)
    colours = [f"colour number {i}" for i in range(40)]
    colour_dataset(colours).save_to_disk(str(data_dir))  # a single split: the pipeline cuts 80/10/10
    out = tmp_path / "run"
    assert (
        main(
            [
                "pipeline",
                "--quick",
                "--model",
                str(model_dir),
                "--dataset",
                str(data_dir),
                "--output_dir",
                str(out),
                "--seed",
                "3",
                "--reward_funcs",
                "correctness",
                "confidence_correctness",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    check_outputs(out, results)
    assert not (out / "base_model").exists()
    assert results["model"] == str(model_dir)
    assert results["data"]["train_rows"] == 32 and results["data"]["test_rows"] == 4
    assert "rewards/confidence_correctness/mean" in results["stages"]["contrastive+rl"]


def test_load_data_splits_a_train_only_dataset_80_10_10_with_a_seed(tmp_path):
    colour_dataset([f"caption {i}" for i in range(50)]).save_to_disk(str(tmp_path / "d"))
    first = load_data(ScriptArguments(dataset_name=str(tmp_path / "d"), split_seed=7))
    again = load_data(ScriptArguments(dataset_name=str(tmp_path / "d"), split_seed=7))
    other = load_data(ScriptArguments(dataset_name=str(tmp_path / "d"), split_seed=8))
    assert {k: len(v) for k, v in first.items()} == {"train": 40, "validation": 5, "test": 5}
    assert list(first["test"]["caption"]) == list(again["test"]["caption"]) != list(other["test"]["caption"])
    all_captions = [c for split in first.values() for c in split["caption"]]
    assert sorted(all_captions) == sorted(f"caption {i}" for i in range(50))


def test_load_data_keeps_existing_splits_and_subsamples(tmp_path):
    data = datasets.DatasetDict(
        {
            "train": colour_dataset([f"t{i}" for i in range(30)]),
            "test": colour_dataset([f"x{i}" for i in range(10)]),
        }
    )
    data.save_to_disk(str(tmp_path / "d"))
    loaded = load_data(
        ScriptArguments(dataset_name=str(tmp_path / "d"), max_train_samples=20, max_eval_samples=4)
    )
    assert set(loaded["test"]["caption"]) <= {f"x{i}" for i in range(10)} and len(loaded["test"]) == 4
    assert len(loaded["train"]) == 20 and len(loaded["validation"]) == 3  # carved from train (10% of 30)
    assert not set(loaded["train"]["caption"]) & set(loaded["validation"]["caption"])
    with pytest.raises(ValueError, match=r"no split 'training'.*Splits present: \['test', 'train'\]"):
        load_data(ScriptArguments(dataset_name=str(tmp_path / "d"), dataset_train_split="training"))


def test_graded_reward_metric_and_reward_by_hand():
    from clip_trl.rewards.graded import GradedReward, greedy_graded_reward

    captions, positives, first = index_captions(["a cat", "a dog", "a car", "a bus"])
    images = torch.eye(4)[[1, 1, 3, 0]]  # cat→dog (same group), dog→dog, car→bus (same), bus→cat (other)
    embeddings = EmbeddingSet(images, torch.eye(4), captions, positives, first)
    assert (
        greedy_graded_reward(embeddings, ["animal", "animal", "vehicle", "vehicle"])
        == (0.5 + 1 + 0.5 + 0) / 4
    )
    reward = GradedReward(column="group")
    rows = [{"group": "animal"}, {"group": "vehicle"}]
    assert reward(
        ["a cat", "a dog", "a bus"],
        ground_truth=["a cat", "a cat", "a cat"],
        chosen_row=[rows[0], rows[0], rows[1]],
        group=["animal"] * 3,
    ) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="needs the `group` column"):
        reward(["a dog"], ground_truth=["a cat"])


def test_greedy_correctness_is_in_batch_accuracy():
    generator = torch.Generator().manual_seed(0)
    captions, positives, first = index_captions([f"c{i}" for i in range(40)])
    images = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.8 * torch.randn(40, 8, generator=generator), dim=-1)
    embeddings = EmbeddingSet(images, texts, captions, positives, first)
    rows = datasets.Dataset.from_dict({"caption": captions})
    rewards = greedy_rewards(
        embeddings,
        rows,
        ["correctness", "confidence_correctness"],
        logit_scale=10.0,
        batch_size=16,
        image_column=None,
    )
    accuracy = in_batch_accuracy_from_embeddings(embeddings, batch_size=16)
    assert 0 < accuracy < 1
    assert rewards["rewards/correctness/mean"] == pytest.approx(accuracy)
    assert 0 < rewards["rewards/confidence_correctness/mean"] < accuracy
    assert rewards["mean_reward"] == pytest.approx(accuracy + rewards["rewards/confidence_correctness/mean"])


def test_results_table_has_one_row_per_stage():
    table = results_table({"base": {"image_to_text_recall@1": 0.01}, "contrastive": {"graded_reward": 0.5}})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| base | 0.010 |") and lines[3].endswith("| 0.500 |")


def test_graded_group_without_a_group_column_is_a_clear_error():
    from clip_trl.scripts.pipeline import _check_pipeline_rewards

    assert _check_pipeline_rewards(["graded_group"], ["image", "caption", "group"]) == ["graded_group"]
    with pytest.raises(ValueError) as info:
        _check_pipeline_rewards(["correctness", "graded_group"], ["image", "caption"])
    assert str(info.value) == (
        "`--reward_funcs graded_group` grades choices by the `group` column, which the training data lacks "
        "(columns: ['image', 'caption']); use e.g. `--reward_funcs correctness`."
    )
