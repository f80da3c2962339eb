"""Every public name of the design contract (../shared/DESIGN.md) imports as documented, whatever the layout inside."""

import importlib

import pytest

PUBLIC = {
    "clip_trl": [
        "ClipContrastiveConfig",
        "ClipContrastiveTrainer",
        "ClipRLConfig",
        "ClipRLTrainer",
        "ClipDPOConfig",
        "ClipDPOTrainer",
        "ClipDistillationConfig",
        "ClipDistillationTrainer",
        "ClipTestTimeConfig",
        "ClipTestTimeAdapter",
        "wise_ft",
        "evaluation",
        "rewards",
        "hub",
        "offline",
        "load_model",
        "default_lora_config",
    ],
    "clip_trl.rewards": [
        "ClipScoreReward",
        "TeacherProbabilityReward",
        "correctness",
        "confidence_correctness",
        "caption_similarity",
    ],
    "clip_trl.evaluation": [
        "retrieval_metrics",
        "zero_shot_accuracy",
        "in_batch_accuracy",
        "CLIP_RETRIEVAL_METRIC_PATH",
    ],
    "clip_trl.adaptation": [
        "ClipTestTimeConfig",
        "ClipTestTimeAdapter",
        "TestTimeAdaptationError",
        "TestTimeResult",
    ],
    "clip_trl.hub": ["load_model", "default_lora_config", "local_hub"],
    "clip_trl.offline": ["build_clip", "load_emoji_dataset"],
}


@pytest.mark.parametrize(
    "module,name", [(module, name) for module, names in PUBLIC.items() for name in names]
)
def test_public_name_imports(module, name):
    value = getattr(importlib.import_module(module), name)
    assert value is not None
    assert name in dir(importlib.import_module(module))


def test_trainers_are_trainers():
    import transformers

    import clip_trl

    for method in ("Contrastive", "RL", "DPO", "Distillation"):
        assert issubclass(getattr(clip_trl, f"Clip{method}Trainer"), transformers.Trainer)
        assert issubclass(getattr(clip_trl, f"Clip{method}Config"), transformers.TrainingArguments)


def test_local_hub_is_the_context_manager():
    from clip_trl.hub import local_hub

    assert callable(local_hub) and not isinstance(local_hub, type(importlib))
