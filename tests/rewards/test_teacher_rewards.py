"""Teacher rewards score what the policy scored, and the one reward-scoring path (`RewardSet`).

The teacher here is built to be right about templated prompts and wrong about bare label names, as a real CLIP
teacher is (it was trained on sentences): a reward that judged the names would teach the student the wrong label.
"""

import math

import pytest
import torch
from clip_test_utils import colour_dataset, png_bytes
from PIL import Image
from torch import nn

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.rewards import ClipScoreReward, RewardSet, TeacherProbabilityReward, score_rewards

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
LABELS = list(COLOURS)


class PromptSensitiveTeacher(nn.Module):
    """A CLIP-like teacher over 3-d features. An image is its mean RGB; a text containing "photo" is the one-hot
    of the colour it names, and a bare name is the one-hot of the *next* colour (red → green, ...): right on
    prompts, wrong on names."""

    def __init__(self, tokenizer):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter to find the device and dtype by
        self.tokenizer = tokenizer

    def get_image_features(self, pixel_values):
        return pixel_values.float().mean(dim=(2, 3)) + self.anchor

    def get_text_features(self, input_ids, attention_mask=None):
        features = []
        for text in self.tokenizer.batch_decode(input_ids, skip_special_tokens=True):
            colour = next(i for i, name in enumerate(LABELS) if name in text)
            if "photo" not in text:
                colour = (colour + 1) % len(LABELS)
            features.append(torch.eye(len(LABELS))[colour] * 3.0 - 1.0)
        return torch.stack(features) + self.anchor


@pytest.fixture()
def teacher(tiny):
    _, processor = tiny
    return PromptSensitiveTeacher(processor.tokenizer), processor


def colour_image(name):
    return Image.new("RGB", (32, 32), COLOURS[name])


def prompts():
    return [f"a photo of a {label}." for label in LABELS]


def test_the_fake_teacher_is_right_on_prompts_and_wrong_on_names(teacher):
    reward = TeacherProbabilityReward(*teacher)
    images = [colour_image(name) for name in LABELS]
    right = reward(LABELS, images=images, candidate_texts=[prompts()] * 3, chosen=[0, 1, 2])
    wrong = reward(LABELS, images=images, candidate_texts=[LABELS] * 3, chosen=[0, 1, 2])
    assert min(right) > 0.9 and max(wrong) < 0.1


def test_teacher_probability_equals_the_hand_softmax(teacher):
    model, processor = teacher
    reward = TeacherProbabilityReward(model, processor)
    log_reward = TeacherProbabilityReward(model, processor, log_probability=True)
    image = colour_image("green")
    options = prompts()
    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    encoded = processor.tokenizer(options, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_embed = nn.functional.normalize(model.get_image_features(pixel_values), dim=-1)
        text_embeds = nn.functional.normalize(model.get_text_features(encoded["input_ids"]), dim=-1)
        expected = torch.softmax(10.0 * image_embed @ text_embeds.T, dim=-1)[0]
    probabilities = reward(LABELS, images=[image] * 3, candidate_texts=[options] * 3, chosen=[0, 1, 2])
    assert probabilities == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    logs = log_reward(LABELS, images=[image] * 3, candidate_texts=[options] * 3, chosen=[0, 1, 2])
    assert logs == pytest.approx(expected.log().tolist(), abs=1e-4)
    assert reward.__name__ == "teacher_probability" and log_reward.__name__ == "teacher_log_probability"


def test_teacher_probability_errors_and_none(teacher):
    reward = TeacherProbabilityReward(*teacher)
    with pytest.raises(ValueError, match="needs the keyword arguments candidate_texts, chosen"):
        reward(["red"], images=[colour_image("red")])
    with pytest.raises(ValueError, match="does not support `direction='text_to_image'`"):
        reward(["red"], images=[colour_image("red")], candidate_texts=[LABELS], chosen=[0], queries=["red"])
    with pytest.raises(ValueError, match="`chosen` index 3 is outside its 3 candidates"):
        reward(["red"], images=[colour_image("red")], candidate_texts=[LABELS], chosen=[3])
    assert (
        reward(
            ["red", "red"], images=[None, colour_image("red")], candidate_texts=[prompts()] * 2, chosen=[0, 0]
        )[0]
        is None
    )


def test_clip_score_scores_the_chosen_text_when_given(teacher):
    reward = ClipScoreReward(*teacher)
    image = colour_image("red")
    by_name = reward(["red"], images=[image])
    by_prompt = reward(["red"], images=[image], chosen_text=["a photo of a red."])
    assert by_prompt[0] > 2.0 and by_name[0] == 0.0  # the name points the (fake) teacher at green


@pytest.mark.parametrize("reward_class", [ClipScoreReward, TeacherProbabilityReward])
def test_teacher_rewards_in_training_judge_the_prompts(tmp_path, tiny, teacher, reward_class):
    """Through the trainer with label candidates, the teacher sees prompts, so the true label earns the most."""
    model, processor = tiny
    names = ["red", "green", "blue"] * 2
    rows = colour_dataset(["x"] * 6, images=[{"bytes": png_bytes(COLOURS[n]), "path": None} for n in names])
    rows = rows.add_column("label", names)
    seen = []

    def recorder(completions, ground_truth, **kwargs):
        seen.append((completions, ground_truth))
        return [None] * len(completions)

    reward = reward_class(*teacher)
    args = ClipRLConfig(
        output_dir=str(tmp_path),
        candidate_labels=LABELS,
        advantage="exact",
        max_steps=1,
        per_device_train_batch_size=6,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=[reward, recorder],
        args=args,
        train_dataset=rows,
        processing_class=processor,
    )
    scores = {}
    original = reward.__call__

    def spy(completions, **kwargs):
        values = original(completions, **kwargs)
        for c, g, v in zip(completions, kwargs["ground_truth"], values, strict=True):
            scores.setdefault(c == g, []).append(v)
        return values

    trainer.rewards.funcs[0] = spy
    trainer.train()
    assert seen, "the rewards were not called"
    assert min(scores[True]) > max(scores[False])  # judged on prompts: the truth is the teacher's favourite


def test_reward_set_combines_with_weights_and_none():
    def half(completions, **kwargs):
        return [0.5 if c == "a cat" else None for c in completions]

    rewards = RewardSet(["correctness", half, half], weights=[1.0, 2.0, 4.0])
    assert rewards.names == ["correctness", "half", "half_2"]
    scores = rewards(["a cat", "a dog"], ground_truth=["a cat", None])
    assert scores.total.tolist()[0] == pytest.approx(1.0 + 1.0 + 2.0)
    assert math.isnan(scores.total.tolist()[1])  # every function said None
    metrics = {k: float(v) for k, v in scores.metrics().items()}
    assert metrics == {
        "rewards/correctness/mean": 1.0,
        "rewards/correctness/std": 0.0,
        "rewards/half/mean": 0.5,
        "rewards/half/std": 0.0,
        "rewards/half_2/mean": 0.5,
        "rewards/half_2/std": 0.0,
    }
    assert score_rewards("correctness", ["x"], ground_truth=["x"]).total.tolist() == [1.0]
    with pytest.raises(ValueError, match="`reward_weights` has 1 entries but there are 3 reward functions"):
        RewardSet(["correctness", half, half], weights=[1.0])
