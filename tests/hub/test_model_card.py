"""Model cards and training curves: the card parses, says what was trained and how to load it, and carries
the final evaluation metrics exactly; the curves picture is legible."""

import functools
import os

import pytest
from huggingface_hub import ModelCard
from matplotlib.figure import Figure

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.hub import default_lora_config
from clip_trl.hub.model_card import final_eval_metrics
from clip_trl.offline import build_clip
from clip_trl.reporting.curves import TrainingCurvesCallback, plot_training_curves
from clip_trl.rewards import correctness

BASE = "clip-trl-test/tiny-base"  # a Hub-style id that is not a local folder: it becomes `base_model`
COMMON = dict(
    per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", logging_steps=1, seed=0, use_cpu=True
)


def tiny_from_hub_id():
    model, processor = build_clip("tiny", seed=0)
    model.config._name_or_path = BASE  # as if loaded with from_pretrained(BASE)
    return model, processor


@pytest.fixture(scope="module")
def trained(tmp_path_factory, emoji):
    """A full-model contrastive run: trained with a checkpoint, evaluated at the end, then saved."""
    model, processor = tiny_from_hub_id()
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path_factory.mktemp("card") / "clip-emoji"),
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        **COMMON,
    )
    trainer = ClipContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=emoji["train"].select(range(16)),
        eval_dataset=emoji["test"].select(range(16)),
        processing_class=processor,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    return trainer, metrics, card


def test_card_front_matter(trained):
    _, _, card = trained
    data = card.data
    assert data.base_model == BASE
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert {"clip_trl", "contrastive", "clip"} <= set(data.tags)
    assert data.model_name == "clip-emoji"


def test_model_index_holds_exactly_the_final_evaluation(trained):
    trainer, metrics, card = trained
    expected = {
        key.removeprefix("eval_"): value
        for key, value in metrics.items()
        if key not in ("eval_runtime", "eval_samples", "epoch")
    }
    assert expected and "image_to_text_recall@1" in expected
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported == expected
    assert {result.dataset_split for result in card.data.eval_results} == {"validation"}
    assert f"| validation | image_to_text_recall@1 | {expected['image_to_text_recall@1']:.4f} |" in card.text
    assert all(result.task_type == "zero-shot-image-classification" for result in card.data.eval_results)
    assert final_eval_metrics(trainer.state.log_history) == {f"eval_{k}": v for k, v in expected.items()}


def test_card_body_explains_training_and_loading(trained):
    trainer, _, card = trained
    text = card.text
    assert "ClipContrastiveTrainer" in text and "InfoNCE" in text
    assert "| loss_type | `clip` |" in text and "| learning_rate | `0.01` |" in text
    assert f'CLIPModel.from_pretrained("{trainer.args.output_dir}")' in text
    assert "PeftModel" not in text
    assert "clip_trl.hub import load_model" in text
    for package in ("clip_trl", "transformers", "torch", "datasets", "peft", "trl"):
        assert f"- {package}: " in text
    assert "radford2021clip" in text and "zhai2023siglip" not in text


def test_training_curves_are_drawn_and_shown(trained):
    trainer, _, card = trained
    picture = os.path.join(trainer.args.output_dir, "training_curves.png")
    with open(picture, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "](training_curves.png)" in card.text
    # The final `evaluate()` came after training ended: the picture was redrawn for the card.
    assert trainer._curves_callback.plotted_entries == len(trainer.state.log_history)


def test_checkpoints_get_a_card_too(trained):
    trainer, _, _ = trained
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-2")
    card = ModelCard.load(os.path.join(checkpoint, "README.md"))
    assert card.data.base_model == BASE and "contrastive" in card.data.tags


def test_test_metrics_reach_the_card_with_their_split(trained, tmp_path, emoji):
    """What `clip-trl rl|contrastive` do after training: `evaluate_on_test` writes test_results.json and the
    card then carries the test metrics, split `test`, beside the validation ones."""
    from clip_trl.scripts.arguments import ScriptArguments
    from clip_trl.scripts.common import evaluate_on_test

    trainer, _, _ = trained
    history = list(trainer.state.log_history)
    data = {"test": emoji["test"].select(range(16, 32))}
    try:
        metrics = evaluate_on_test(trainer, data, ScriptArguments(dataset_test_split="test"))
        card = ModelCard.load(os.path.join(trainer.args.output_dir, "README.md"))
    finally:  # the module's other tests read the run as it was
        trainer.state.log_history[:] = history
        trainer.create_model_card()
    by_split = {}
    for result in card.data.eval_results:
        by_split.setdefault(result.dataset_split, {})[result.metric_name] = result.metric_value
    assert by_split["test"]["image_to_text_recall@1"] == metrics["test_image_to_text_recall@1"]
    assert set(by_split) == {"test", "validation"}
    assert "test_runtime" not in card.text and "`test`, the held-out test split" in card.text
    table = card.text.split("| split | metric | value |")[1]
    assert table.index("| test |") < table.index("| validation |")  # the test split first


def test_quick_start_says_photo_is_a_placeholder_and_composites_transparency(trained):
    _, _, card = trained
    assert 'Image.open("photo.jpg")  # a placeholder: the path of your own image' in card.text
    assert 'Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))' in card.text
    assert "turns transparent\npixels black" in card.text or "transparent pixels black" in card.text.replace(
        "\n", " "
    )


def weighted(completions, scale, **kwargs):
    return [scale * r for r in correctness(completions, **kwargs)]


def test_rl_adapter_card(tmp_path, emoji):
    model, processor = tiny_from_hub_id()
    args = ClipRLConfig(
        output_dir=str(tmp_path / "rl"),
        num_samples=4,
        advantage="rloo",
        beta=0.2,
        policy_temperature=0.5,
        reward_weights=[1.0, 0.5],
        **COMMON,
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=["correctness", functools.partial(weighted, scale=2.0)],
        args=args,
        train_dataset=emoji["train"].select(range(16)),
        processing_class=processor,
        peft_config=default_lora_config(r=8),
    )
    trainer.create_model_card(dataset_name="clip-trl-test/emoji", tags=["emoji"], license="mit")
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    data, text = card.data, card.text
    assert data.library_name == "peft" and data.base_model == BASE and data.license == "mit"
    assert data.datasets == ["clip-trl-test/emoji"]
    assert {"clip_trl", "rl", "lora", "emoji"} <= set(data.tags)
    assert data.eval_results is None  # never evaluated: no model-index
    assert "from peft import PeftModel" in text
    assert f'base = CLIPModel.from_pretrained("{BASE}")' in text
    assert f'PeftModel.from_pretrained(base, "{args.output_dir}")' in text
    assert "| `correctness` | 1 |" in text and "| `weighted` | 0.5 |" in text
    for row in (
        "| advantage | `rloo` |",
        "| beta | `0.2` |",
        "| num_samples | `4` |",
        "| policy_temperature | `0.5` |",
        "| r | `8` |",
        "| target_modules | `q_proj, v_proj` |",
    ):
        assert row in text, row
    assert "adapters disabled" in text
    assert "ahmadian2024rloo" in text and "hu2022lora" in text and "shao2024deepseekmath" not in text
    assert "training_curves.png" not in text  # nothing trained, no picture


def test_siglip_card_cites_siglip_and_accepts_trainer_style_arguments(tmp_path, emoji):
    model, processor = build_clip("tiny", seed=0)  # built in memory: no base model id to cite
    args = ClipContrastiveConfig(output_dir=str(tmp_path / "siglip"), loss_type="siglip", **COMMON)
    trainer = ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"].select(range(16)), processing_class=processor
    )
    trainer.create_model_card(
        model_name="My SigLIP",
        language="en",
        finetuned_from="org/base",
        dataset="org/data",
        tasks="zero-shot-image-classification",
    )
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    assert card.data.base_model == "org/base" and card.data.language == "en"
    assert card.data.datasets == ["org/data"]
    assert card.text.lstrip().startswith("# My SigLIP")
    assert "zhai2023siglip" in card.text and "sigmoid" in card.text
    # The base model's name comes from the model when no one says otherwise: here there is none.
    trainer._model_card_kwargs = {}
    trainer.create_model_card()
    assert ModelCard.load(os.path.join(args.output_dir, "README.md")).data.base_model is None


def test_a_new_method_describes_itself_without_touching_model_card(tmp_path, emoji):
    """A third trainer's config supplies its description, citations and settings; the card shows them."""
    import dataclasses
    from typing import ClassVar

    @dataclasses.dataclass
    class ToyConfig(ClipContrastiveConfig):
        toy_strength: float = 0.0
        toy_unused: int = 3
        _card_fields: ClassVar[tuple[str, ...]] = ("toy_strength", "toy_unused")

        def _card_shows(self, name, value):
            return name != "toy_unused" and super()._card_shows(name, value)

        def model_card_description(self, adapter=False):
            return f"Toy objective of strength {self.toy_strength} (adapter: {adapter})."

        def model_card_citations(self):
            return ["dpo", "@misc{toy2026, title = {Toy}}"]

    model, processor = build_clip("tiny", seed=0)
    args = ToyConfig(output_dir=str(tmp_path / "toy"), toy_strength=0.25, **COMMON)
    trainer = ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"].select(range(16)), processing_class=processor
    )
    trainer.create_model_card()
    text = ModelCard.load(os.path.join(args.output_dir, "README.md")).text
    assert "Toy objective of strength 0.25 (adapter: False)." in text
    assert "| toy_strength | `0.25` |" in text and "toy_unused" not in text
    assert "rafailov2023dpo" in text and "@misc{toy2026, title = {Toy}}" in text and "radford2021clip" in text
    with pytest.raises(KeyError, match="No BibTeX entry for citation key 'nope'"):
        from clip_trl.hub.citations import bibtex_entries

        bibtex_entries(["nope"])


RL_HISTORY = [
    {"loss": 0.5, "reward": 0.2, "reward_std": 0.1, "kl": 0.0, "step": 1},
    {"loss": 0.3, "reward": 0.4, "reward_std": 0.2, "kl": 0.01, "step": 2},
    {"eval_image_to_text_recall@1": 0.3, "eval_text_to_image_recall@1": 0.25, "eval_loss": 1.0, "step": 2},
    {"train_runtime": 1.0, "train_loss": 0.4, "step": 2},
]


def test_plot_has_legible_titled_panels(tmp_path, monkeypatch):
    figures = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1]
    )
    path = plot_training_curves(RL_HISTORY, tmp_path / "sub" / "curves.png")
    assert path == str(tmp_path / "sub" / "curves.png") and os.path.getsize(path) > 0
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "Loss",
        "Reward",
        "KL to the reference policy",
        "Evaluation recall@1",
    ]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    texts = [
        t
        for ax in axes
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels())
    ]
    assert min(t.get_fontsize() for t in texts) >= 8


def test_plot_leaves_out_empty_panels_and_draws_nothing_from_nothing(tmp_path):
    assert plot_training_curves([{"train_runtime": 1.0, "step": 0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    contrastive_history = [{"loss": 2.0, "step": 1}]
    assert plot_training_curves(contrastive_history, tmp_path / "one.png") is not None


def test_curves_callback_draws_on_the_main_process_only(tmp_path):
    class State:
        log_history = RL_HISTORY
        is_world_process_zero = False

    class Args:
        output_dir = str(tmp_path)

    callback = TrainingCurvesCallback()
    callback.on_train_end(Args(), State(), None)
    assert not (tmp_path / "training_curves.png").exists()
    State.is_world_process_zero = True
    callback.on_train_end(Args(), State(), None)
    assert (tmp_path / "training_curves.png").exists() and callback.plotted_entries == len(RL_HISTORY)


def test_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    from clip_trl.hub import citations, model_card
    from clip_trl.reporting import curves as plotting
    from clip_trl.trainer.base import ClipBaseTrainer
    from clip_trl.trainer.base_config import ClipBaseConfig

    monkeypatch.chdir(tmp_path)
    assert doctest.testmod(model_card).failed == 0
    assert doctest.testmod(citations).failed == 0
    assert doctest.testmod(plotting).failed == 0
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(
        ClipBaseTrainer.create_model_card, "create_model_card", globs={}
    ):
        runner.run(test)
    for test in doctest.DocTestFinder().find(ClipBaseConfig.model_card_fields, "model_card_fields", globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
