"""`clip-trl adapt`: a saved model and teacher, a split of unlabelled images, the predictions and the report."""

import json

import datasets
from PIL import Image

from clip_trl.cli import main
from clip_trl.offline import build_clip


def test_clip_trl_adapt_writes_predictions_and_the_report(tmp_path, capsys):
    """The run prints its costs as JSON, writes predictions.jsonl, the report and the online weights + card."""
    for name, seed in (("student", 0), ("teacher", 1)):
        model, processor = build_clip("tiny", seed=seed)
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    colours = ["red", "blue", "red"]
    rows = {"image": [Image.new("RGB", (32, 32), c) for c in colours], "label": colours}
    split = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(tmp_path / "data")
    out = tmp_path / "run"
    status = main(
        [
            "adapt",
            "--model_name_or_path",
            str(tmp_path / "student"),
            "--teacher_model_name_or_path",
            str(tmp_path / "teacher"),
            "--dataset_name",
            str(tmp_path / "data"),
            "--candidate_labels",
            "red",
            "blue",
            "--label_column",
            "label",
            "--mode",
            "online",
            "--learning_rate",
            "0.01",
            "--save_model",
            "true",
            "--output_dir",
            str(out),
        ]
    )
    assert status == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    report = json.loads((out / "adaptation_report.json").read_text())
    assert report["settings"]["mode"] == "online" and report["stats"]["rewards"] == ["clip_score"]
    assert (out / "model" / "README.md").exists() and (out / "model" / "config.json").exists()


def test_clip_trl_adapt_without_a_model_says_so(capsys):
    assert main(["adapt", "--candidate_labels", "a", "b", "--objective", "none"]) == 1
    assert "needs --model_name_or_path" in capsys.readouterr().err
