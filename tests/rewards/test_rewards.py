import copy
import functools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, TrainerState

from clip_trl.rewards import (
    REWARD_FUNCTIONS,
    ClipScoreReward,
    caption_similarity,
    confidence_correctness,
    correctness,
    get_reward_function,
    reward_name,
)
from clip_trl.rewards.graded import GradedReward

# What the RL trainer passes besides the inputs a given reward uses; built-ins must ignore it all.
EXTRA = {
    "candidates": [["a cat", "a dog"], ["a cat", "a dog"]],
    "chosen": [0, 1],
    "images": [None, None],
    "probs": [0.25, 0.75],
    "label_id": [3, 4],
    "trainer_state": TrainerState(),
}


# ------------------------------------------------------------------------------------------ correctness


def test_correctness_by_hand():
    completions = ["a cat", "a cat", "A cat", "a dog", "a cow", "a cow"]
    ground_truth = ["a cat", "a dog", "a cat", ["a puppy", "a dog"], None, []]
    # exact match; mismatch; case matters; any of a list matches; unknown; empty list is unknown too
    assert correctness(completions, ground_truth=ground_truth) == [1.0, 0.0, 0.0, 1.0, None, None]


def test_correctness_without_ground_truth_is_all_none():
    assert correctness(["a cat", "a dog"]) == [None, None]
    assert correctness(["a cat", "a dog"], ground_truth=None) == [None, None]
    assert correctness([]) == []


def test_correctness_ignores_extra_kwargs():
    assert correctness(["a cat", "a cat"], ground_truth=["a cat", "a dog"], **EXTRA) == [1.0, 0.0]


def test_misaligned_kwargs_are_an_error_naming_the_reward():
    with pytest.raises(ValueError, match=r"correctness: `ground_truth` has 1 entries but there are 2"):
        correctness(["a", "b"], ground_truth=["a"])
    with pytest.raises(ValueError, match=r"confidence_correctness: `probs` has 3 entries"):
        confidence_correctness(["a", "b"], ground_truth=["a", "b"], probs=[0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="got a string"):
        caption_similarity(["a"], ground_truth="a")


# ------------------------------------------------------------------------------- confidence_correctness


def test_confidence_correctness_by_hand():
    completions = ["a cat", "a dog", "a cow", "a hen"]
    ground_truth = ["a cat", "a cat", None, ["a hen", "a fox"]]
    probs = [0.5, 0.9, 0.2, 0.125]
    assert confidence_correctness(completions, ground_truth=ground_truth, probs=probs) == [
        0.5,
        0.0,
        None,
        0.125,
    ]


def test_confidence_correctness_accepts_a_probs_tensor_and_ignores_extra_kwargs():
    extra = {k: v for k, v in EXTRA.items() if k != "probs"}
    scores = confidence_correctness(
        ["a cat", "a dog"], ground_truth=["a cat", "a cat"], probs=torch.tensor([0.25, 0.5]), **extra
    )
    assert scores == [0.25, 0.0]


def test_confidence_correctness_without_ground_truth_or_probs():
    assert confidence_correctness(["a", "b"], probs=[0.3, 0.4]) == [None, None]
    assert confidence_correctness(["a", "b"]) == [None, None]  # nothing known: probs not needed
    assert confidence_correctness(["a"], ground_truth=[None]) == [None]
    with pytest.raises(ValueError, match="needs `probs`"):
        confidence_correctness(["a", "b"], ground_truth=["a", None])


# ----------------------------------------------------------------------------------- caption_similarity


def test_caption_similarity_punctuation_and_case_by_hand():
    # words: [a, dog, running, on, the, beach] vs [the, dog, runs, on, a, beach]
    # shared: a, dog, on, the, beach = 5 -> P = R = 5/6, F1 = 2*5 / (6 + 6)
    completion = "A dog, running on the BEACH!"
    truth = "the Dog runs on... a beach."
    assert caption_similarity([completion], ground_truth=[truth]) == [pytest.approx(10 / 12)]


def test_caption_similarity_counts_repeated_words_once_per_occurrence():
    # [dog, dog, dog] vs [a, dog]: overlap 1, P = 1/3, R = 1/2, F1 = 2*(1/3)*(1/2) / (1/3 + 1/2) = 0.4
    assert caption_similarity(["dog dog dog"], ground_truth=["a dog"]) == [pytest.approx(0.4)]


def test_caption_similarity_takes_the_best_of_several_ground_truths():
    # [a, red, car] vs [a, blue, car]: 2 shared of 3 + 3 -> 4/6; vs [red, car]: 2 shared -> 4/5
    scores = caption_similarity(["a red car"], ground_truth=[["a blue car", "red car!", "a bus"]])
    assert scores == [pytest.approx(0.8)]


def test_caption_similarity_edge_cases():
    completions = ["The dog's ball", "café", "a cat", "", "🐱", "🐱", "a cat", "a_cat"]
    ground_truth = ["the dogs ball", "cafe\u0301", None, "a cat", "🐱", "🐶", "", "a cat"]
    assert caption_similarity(completions, ground_truth=ground_truth) == [
        1.0,  # apostrophes join: "dog's" == "dogs"
        1.0,  # composed and decomposed accents are the same word
        None,  # unknown ground truth
        0.0,  # no words against some words
        1.0,  # no words on either side: an exact match earns credit...
        0.0,  # ...a different wordless text does not
        0.0,
        1.0,  # the underscore separates words
    ]


def test_caption_similarity_none_handling_and_extra_kwargs():
    assert caption_similarity(["a cat", "a dog"]) == [None, None]
    assert caption_similarity(["a cat", "a dog"], ground_truth=["a cat", None], **EXTRA) == [1.0, None]


def test_caption_similarity_is_in_unit_interval():
    rng = np.random.default_rng(0)
    words = ["a", "cat", "dog", "red", "the", "on", "mat"]
    for _ in range(200):
        completion = " ".join(rng.choice(words, size=rng.integers(0, 6)))
        truth = " ".join(rng.choice(words, size=rng.integers(0, 6)))
        (score,) = caption_similarity([completion], ground_truth=[truth])
        assert 0.0 <= score <= 1.0


# ---------------------------------------------------------------------------------- registry and names


def test_registry_holds_the_built_ins():
    built_ins = {
        "correctness": correctness,
        "confidence_correctness": confidence_correctness,
        "caption_similarity": caption_similarity,
        "graded_group": REWARD_FUNCTIONS["graded_group"],
    }
    assert built_ins == REWARD_FUNCTIONS
    assert isinstance(REWARD_FUNCTIONS["graded_group"], GradedReward)
    assert REWARD_FUNCTIONS["graded_group"](
        [" a", "b"], ground_truth=[" a", "c"], group=["x", "x"], chosen_row=[None, {"group": "x"}]
    ) == [1.0, 0.5]
    for name, func in REWARD_FUNCTIONS.items():
        assert get_reward_function(name) is func
        assert reward_name(func) == name


def test_get_reward_function_unknown_name_lists_the_built_ins():
    with pytest.raises(ValueError) as excinfo:
        get_reward_function("x")
    assert str(excinfo.value) == (
        "Unknown reward function 'x'. Built-in rewards: caption_similarity, confidence_correctness, "
        "correctness, graded_group. Pass a callable, a dotted import path (`my_module.my_reward`), or a CLIP "
        "model's folder or hub id (a teacher reward) for anything else."
    )
    with pytest.raises(TypeError, match="name of a built-in"):
        get_reward_function(correctness)


class _LengthReward:
    def __call__(self, completions, **kwargs):
        return [float(len(c)) for c in completions]


def _my_reward(completions, scale=1.0, **kwargs):
    return [scale] * len(completions)


def test_reward_name():
    assert reward_name(_my_reward) == "_my_reward"
    assert reward_name(functools.partial(_my_reward, scale=2.0)) == "_my_reward"
    assert reward_name(functools.partial(functools.partial(_my_reward, scale=2.0), extra=1)) == "_my_reward"
    assert reward_name(_LengthReward()) == "_LengthReward"
    assert reward_name(functools.partial(_LengthReward())) == "_LengthReward"
    assert reward_name(lambda completions, **kwargs: []) == "<lambda>"


# ------------------------------------------------------------------------------------- ClipScoreReward


def _tokenizers_processor():
    """A CLIPProcessor with a word-level tokenizer built offline with `tokenizers` (the fallback)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

    words = ["<|startoftext|>", "<|endoftext|>", "[UNK]"]
    words += [
        "a",
        "an",
        "the",
        "photo",
        "of",
        "red",
        "green",
        "blue",
        "black",
        "white",
        "cat",
        "dog",
        "square",
        "circle",
        "picture",
    ]
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        model_max_length=77,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPProcessor(image_processor=image_processor, tokenizer=fast)


def _offline_processor():
    try:
        from clip_trl.offline import build_clip
    except ImportError:
        pytest.skip("clip_trl.offline.build_clip is not available")
    return build_clip("tiny")[1]


@pytest.fixture(scope="module", params=["offline", "tokenizers"])
def processor(request):
    return _offline_processor() if request.param == "offline" else _tokenizers_processor()


def _tiny_clip(processor, seed: int = 0) -> CLIPModel:
    tokenizer = processor.tokenizer
    shared = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **shared,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            # pool at the first EOS (the padding token too), as OpenAI CLIP does
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": 16,
        },
        vision_config={**shared, "image_size": 32, "patch_size": 8, "projection_dim": 16},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # Not square and not 32 px, so the processor's resize and crop are exercised.
    return [Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _hand_clip_score(model, processor, image, text, weight):
    """weight * max(cos, 0) for one pair, straight from get_image_features / get_text_features."""
    pixel_values = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")[
        "pixel_values"
    ]
    encoded = processor.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        image_embed = _features(model.get_image_features(pixel_values=pixel_values))[0].double()
        text_embed = _features(
            model.get_text_features(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        )[0].double()
    cosine = float(image_embed @ text_embed / (image_embed.norm() * text_embed.norm()))
    return weight * max(cosine, 0.0)


TEXTS = ["a photo of a cat", "a red square", "a dog", "a black and white picture of a dog on the grass"]


def _extra(n: int) -> dict:
    """Trainer-style extra kwargs for n actions (images and queries excluded: they are the inputs)."""
    return {
        "candidates": [TEXTS] * n,
        "chosen": [0] * n,
        "probs": [0.5] * n,
        "ground_truth": [None] * n,
        "trainer_state": TrainerState(),
    }


def test_clip_score_equals_the_hand_formula(processor):
    model = _tiny_clip(processor)
    reward = ClipScoreReward(model, processor, weight=3.0, batch_size=3)
    a, b, c = _images(3)
    images = [a, a, a, a, b, b, c, c]
    completions = [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3], TEXTS[0], TEXTS[2], TEXTS[1], TEXTS[3]]
    scores = reward(completions, images=images, **_extra(8))
    expected = [
        _hand_clip_score(model, processor, im, t, 3.0) for im, t in zip(images, completions, strict=True)
    ]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert all(isinstance(s, float) and 0.0 <= s <= 3.0 for s in scores)


def test_clip_score_clamps_negative_similarity_to_zero(processor):
    model = _tiny_clip(processor)
    # Negating the text projection negates every cosine, so each pair is negative for one of the two.
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()
    images, texts = _images(3), TEXTS
    pairs = [(im, t) for im in images for t in texts]
    scores = ClipScoreReward(flipped, processor)([t for _, t in pairs], images=[im for im, _ in pairs])
    expected = [_hand_clip_score(flipped, processor, im, t, 2.5) for im, t in pairs]
    assert scores == pytest.approx(expected, abs=1e-5)
    original = ClipScoreReward(model, processor)([t for _, t in pairs], images=[im for im, _ in pairs])
    # Exactly one of cos and -cos is positive, so at most one of the two scores is non-zero.
    assert all(min(s, o) == 0.0 for s, o in zip(scores, original, strict=True))
    # Both branches occur: pairs clamped to 0 by the flip that score positive without it.
    assert any(o > 0.0 and s == 0.0 for s, o in zip(scores, original, strict=True))


def test_clip_score_teacher_is_frozen_and_unchanged(processor):
    model = _tiny_clip(processor)
    model.train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reward = ClipScoreReward(model, processor)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        reward(TEXTS[:2], images=_images(2))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert reward.__name__ == "clip_score" and reward_name(reward) == "clip_score"


def test_clip_score_embeds_each_distinct_image_and_text_once(processor, monkeypatch):
    model = _tiny_clip(processor)
    reward = ClipScoreReward(model, processor, batch_size=2)
    image_rows, text_rows = [], []
    get_image_features, get_text_features = model.get_image_features, model.get_text_features

    def count_images(*args, **kwargs):
        image_rows.append(kwargs["pixel_values"].shape[0])
        return get_image_features(*args, **kwargs)

    def count_texts(*args, **kwargs):
        text_rows.append(kwargs["input_ids"].shape[0])
        return get_text_features(*args, **kwargs)

    monkeypatch.setattr(model, "get_image_features", count_images)
    monkeypatch.setattr(model, "get_text_features", count_texts)
    a, b, c = _images(3)
    num_samples = 4
    images = [a] * num_samples + [b] * num_samples + [c] * num_samples  # how the trainer repeats queries
    completions = [TEXTS[i % 2] for i in range(len(images))]
    scores = reward(completions, images=images)
    assert len(scores) == 12
    assert image_rows == [2, 1]  # 3 distinct images, in batches of 2
    assert text_rows == [2]  # 2 distinct texts
    # The cache lives within one call only: a second call embeds again.
    reward(completions[:1], images=images[:1])
    assert image_rows == [2, 1, 1]


def test_clip_score_text_to_image(processor):
    model = _tiny_clip(processor)
    reward = ClipScoreReward(model, processor)
    a, b, c = _images(3, seed=1)
    queries = [TEXTS[0], TEXTS[0], TEXTS[3], TEXTS[3]]
    chosen_images = [a, b, a, c]
    completions = ["image 0", "image 1", "image 0", "image 2"]  # whatever names the chosen images
    scores = reward(completions, images=chosen_images, queries=queries, **_extra(4))
    expected = [
        _hand_clip_score(model, processor, im, q, 2.5) for im, q in zip(chosen_images, queries, strict=True)
    ]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_clip_score_converts_any_image_mode_to_rgb(processor, tmp_path):
    model = _tiny_clip(processor)
    reward = ClipScoreReward(model, processor)
    (rgb,) = _images(1)
    grey = rgb.convert("L")
    path = tmp_path / "grey.png"
    grey.save(path)
    scores = reward([TEXTS[0]] * 3, images=[grey, grey.convert("RGB"), str(path)])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert scores[2] == pytest.approx(scores[1], abs=1e-6)


def test_clip_score_none_entries_and_missing_images(processor):
    reward = ClipScoreReward(_tiny_clip(processor), processor)
    (image,) = _images(1)
    scores = reward(TEXTS[:3], images=[image, None, image])
    assert scores[1] is None and isinstance(scores[0], float) and isinstance(scores[2], float)
    assert reward(TEXTS[:2], images=[None, None]) == [None, None]
    assert reward([], images=[]) == []
    assert reward([TEXTS[0]], images=[image], queries=[None]) == [None]
    with pytest.raises(ValueError, match="needs the `images`"):
        reward(TEXTS[:1])
    with pytest.raises(ValueError, match="`images` has 1 entries but there are 2"):
        reward(TEXTS[:2], images=[image])


def test_clip_score_loads_from_a_local_path(processor, tmp_path):
    model = _tiny_clip(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images = _images(2)
    from_path = ClipScoreReward(str(tmp_path), device="cpu")
    from_instance = ClipScoreReward(model, processor)
    assert from_path(TEXTS[:2], images=images) == pytest.approx(
        from_instance(TEXTS[:2], images=images), abs=1e-6
    )
    assert all(not p.requires_grad for p in from_path.model.parameters())


def test_clip_score_argument_errors(processor):
    model = _tiny_clip(processor)
    with pytest.raises(ValueError, match="no `processor`"):
        ClipScoreReward(model)
    with pytest.raises(TypeError, match="not a CLIP-like dual encoder"):
        ClipScoreReward(torch.nn.Linear(2, 2), processor)
    with pytest.raises(TypeError, match="image_processor"):
        ClipScoreReward(model, processor.tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        ClipScoreReward(model, processor, batch_size=0)


def test_clip_score_sees_the_cosine_not_the_logit_scale(processor):
    # CLIPScore uses the cosine only: the teacher's temperature must not change it.
    model = _tiny_clip(processor)
    images = _images(2)
    scores = ClipScoreReward(model, processor)(TEXTS[:2], images=images)
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    assert ClipScoreReward(model, processor)(TEXTS[:2], images=images) == pytest.approx(scores, abs=1e-7)
