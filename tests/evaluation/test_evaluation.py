"""Tests of clip_trl.evaluation and the shipped `clip_retrieval` evaluate module.

The metric functions are driven with hand-built embeddings whose scores are worked out by hand in the
comments; the model-facing functions run on a tiny random CLIP (seconds on a CPU, nothing downloaded).
"""

from __future__ import annotations

import doctest
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_trl import evaluation
from clip_trl.data.rows import BadRowError, load_image
from clip_trl.evaluation import (
    CLIP_RETRIEVAL_METRIC_PATH,
    EmbeddingSet,
    compute_embeddings,
    evaluate_all,
    in_batch_accuracy,
    in_batch_accuracy_from_embeddings,
    index_captions,
    retrieval_metrics,
    retrieval_scores,
    scores_from_embeddings,
    zero_shot_accuracy,
    zero_shot_scores,
)
from clip_trl.evaluation import scores as score_functions

REPO_ROOT = Path(__file__).resolve().parents[2]


def recall(scores: dict[str, float], direction: str, k: int) -> float:
    return scores[f"{direction}_recall@{k}"]


def from_score_matrix(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose dot products are exactly `scores`: one-hot images, texts = columns of `scores`.

    The metric functions rank by dot product and do not need unit vectors, so this lets a test state its
    similarity matrix directly.
    """
    matrix = torch.tensor(scores, dtype=torch.float32)
    return torch.eye(matrix.shape[0]), matrix.T.contiguous()


# ---------------------------------------------------------------------------------------- index_captions


def test_index_captions_dedups_and_keeps_lists() -> None:
    captions, positives, first = index_captions([["a", "b"], "c", "a", ["c", "d", "c"]])
    assert captions == ["a", "b", "c", "d"]
    assert positives.dtype == torch.bool
    assert positives.int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]]
    assert first.dtype == torch.long
    assert first.tolist() == [0, 2, 0, 2]


def test_embedding_set_checks_shapes() -> None:
    captions, positives, first = index_captions(["a", "b"])
    with pytest.raises(ValueError, match="positives"):
        EmbeddingSet(torch.eye(2), torch.eye(2), captions, positives[:, :1], first)
    with pytest.raises(ValueError, match="widths"):
        EmbeddingSet(torch.eye(2), torch.ones(2, 3), captions, positives, first)


# ------------------------------------------------------------------------------------------- retrieval


def test_identity_embeddings_recall_is_one() -> None:
    embeds = F.normalize(torch.randn(7, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    scores = retrieval_scores(embeds, embeds.clone(), torch.eye(7, dtype=torch.bool))
    assert set(scores) == {f"{d}_recall@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(value == 1.0 for value in scores.values())


def test_permuted_texts_recall_counts_fixed_points() -> None:
    # Text j is image perm[j]'s own vector, but its positive is image j: only fixed points of the
    # permutation (0 and 3) are ranked first; the others lose to the exact match (score 1 > any other).
    images = F.normalize(torch.randn(6, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    perm = [0, 2, 1, 3, 5, 4]
    texts = images[perm]
    scores = retrieval_scores(images, texts, torch.eye(6, dtype=torch.bool), ks=(1, 6))
    assert recall(scores, "image_to_text", 1) == pytest.approx(2 / 6)
    assert recall(scores, "text_to_image", 1) == pytest.approx(2 / 6)
    assert recall(scores, "image_to_text", 6) == 1.0
    # With the positives following the permutation, every query finds its match first.
    matching = torch.zeros(6, 6, dtype=torch.bool)
    matching[perm, range(6)] = True
    assert all(v == 1.0 for v in retrieval_scores(images, texts, matching, ks=(1,)).values())


def test_recall_by_hand() -> None:
    # rows = images, columns = texts; text i is image i's positive.
    images, texts = from_score_matrix(
        [
            [0.90, 0.80, 0.10, 0.00],  # image 0: positive 0.90 is the best       -> rank 0
            [0.70, 0.60, 0.50, 0.20],  # image 1: 0.70 beats positive 0.60         -> rank 1
            [0.95, 0.85, 0.30, 0.40],  # image 2: 0.95, 0.85, 0.40 beat 0.30       -> rank 3
            [0.10, 0.20, 0.25, 0.35],  # image 3: positive 0.35 is the best        -> rank 0
        ]
    )
    # Columns (text queries): text 0 -> 0.95 beats 0.90 (rank 1); text 1 -> 0.80, 0.85 beat 0.60 (rank 2);
    # text 2 -> 0.50 beats 0.30 (rank 1); text 3 -> 0.40 beats 0.35 (rank 1).
    scores = retrieval_scores(images, texts, torch.eye(4, dtype=torch.bool), ks=(1, 2, 3, 4))
    assert [recall(scores, "image_to_text", k) for k in (1, 2, 3, 4)] == [0.5, 0.75, 0.75, 1.0]
    assert [recall(scores, "text_to_image", k) for k in (1, 2, 3, 4)] == [0.0, 0.75, 1.0, 1.0]


def test_multiple_positives_list_captions_and_shared_captions() -> None:
    # Row 0 has captions "a" and "b" (COCO style); row 2 repeats "a", so text "a" has images 0 and 2.
    captions, positives, _ = index_captions([["a", "b"], "c", "a"])
    assert captions == ["a", "b", "c"]
    images, texts = from_score_matrix(
        [
            [0.20, 0.90, 0.50],  # image 0: best positive "b" 0.90, nothing above        -> rank 0
            [0.80, 0.10, 0.30],  # image 1: positive "c" 0.30, "a" 0.80 above             -> rank 1
            [0.70, 0.60, 0.65],  # image 2: positive "a" 0.70 is the best                 -> rank 0
        ]
    )
    # Text "a": best positive image 2 (0.70), negative image 1 (0.80) above -> rank 1.
    # Text "b": image 0 (0.90) best -> rank 0. Text "c": images 0 (0.50) and 2 (0.65) above 0.30 -> rank 2.
    scores = retrieval_scores(images, texts, positives, ks=(1, 2, 3))
    assert [recall(scores, "image_to_text", k) for k in (1, 2)] == pytest.approx([2 / 3, 1.0])
    assert [recall(scores, "text_to_image", k) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_k_larger_than_candidates_is_clamped() -> None:
    # The positive is the very last candidate for every image: recall@3 (= all candidates) and @10 are 1.0.
    images, texts = from_score_matrix([[0.1, 0.9, 0.8], [0.9, 0.1, 0.8], [0.9, 0.8, 0.1]])
    scores = retrieval_scores(images, texts, torch.eye(3, dtype=torch.bool), ks=(1, 2, 3, 10))
    assert recall(scores, "image_to_text", 1) == 0.0
    assert recall(scores, "image_to_text", 2) == 0.0
    assert recall(scores, "image_to_text", 3) == 1.0
    assert recall(scores, "image_to_text", 10) == 1.0
    assert recall(scores, "text_to_image", 10) == 1.0


def test_ties_count_against_the_query() -> None:
    # Image 0's positive ties with a negative: pessimistic rank 1, a miss at k=1 and a hit at k=2.
    images, texts = from_score_matrix([[0.5, 0.5, 0.1], [0.2, 0.9, 0.1], [0.0, 0.0, 0.3]])
    scores = retrieval_scores(images, texts, torch.eye(3, dtype=torch.bool), ks=(1, 2))
    assert recall(scores, "image_to_text", 1) == pytest.approx(2 / 3)
    assert recall(scores, "image_to_text", 2) == 1.0
    # Ties between positives never hurt: image 0 with both texts positive is a hit at k=1.
    both = torch.tensor([[True, True, False], [False, True, False], [False, False, True]])
    assert recall(retrieval_scores(images, texts, both, ks=(1,)), "image_to_text", 1) == 1.0
    # A collapsed model (every score equal) is ranked last, not rewarded by the candidate order.
    same = torch.ones(4, 8) / 8**0.5
    collapsed = retrieval_scores(same, same, torch.eye(4, dtype=torch.bool), ks=(1, 3, 4))
    assert [recall(collapsed, "image_to_text", k) for k in (1, 3, 4)] == [0.0, 0.0, 1.0]
    assert [recall(collapsed, "text_to_image", k) for k in (1, 3, 4)] == [0.0, 0.0, 1.0]


def test_retrieval_is_blockwise_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny similarity blocks (one image at a time) must give the same numbers as one big block.
    generator = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(20, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    positives = torch.rand(20, 30, generator=generator) < 0.1
    positives[torch.arange(20), torch.arange(20)] = True
    positives[torch.arange(20, 30) % 20, torch.arange(20, 30)] = True
    whole = retrieval_scores(images, texts, positives, ks=(1, 3, 7))
    monkeypatch.setattr(score_functions, "_SCORE_BLOCK_ELEMENTS", 1)
    assert retrieval_scores(images, texts, positives, ks=(1, 3, 7)) == whole


def test_retrieval_input_errors() -> None:
    with pytest.raises(ValueError, match="no positive"):
        retrieval_scores(torch.eye(2), torch.eye(2), torch.tensor([[True, False], [True, False]]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_scores(torch.eye(2), torch.eye(3), torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_scores(torch.eye(2), torch.eye(2), torch.eye(2, dtype=torch.bool), ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_scores(torch.full((2, 2), float("nan")), torch.eye(2), torch.eye(2, dtype=torch.bool))


# ------------------------------------------------------------------------------------ in-batch accuracy


def test_in_batch_accuracy_by_hand() -> None:
    # Rows 2 and 3 share the caption "x"; one-hot texts, images pointing at the caption they resemble.
    captions, positives, first = index_captions(["a", "b", "x", "x", "e"])
    assert captions == ["a", "b", "x", "e"]
    texts = torch.eye(4)
    images = texts[[0, 0, 2, 2, 1]]  # image 1 looks like "a", image 4 like "b"
    es = EmbeddingSet(images, texts, captions, positives, first)
    # batch_size 2 -> {0, 1}, {2, 3}, {4}: image 1 picks "a" (miss); image 3 ties between the two "x"
    # columns, both its positives (hit); image 4 is alone in the partial last batch (hit).
    assert in_batch_accuracy_from_embeddings(es, batch_size=2) == pytest.approx(4 / 5)
    # One batch of 5: image 4 now sees "b" and picks it (miss) -> 3 / 5.
    assert in_batch_accuracy_from_embeddings(es, batch_size=5) == pytest.approx(3 / 5)
    assert in_batch_accuracy_from_embeddings(es, batch_size=64) == pytest.approx(3 / 5)
    # Batches of one are trivially right.
    assert in_batch_accuracy_from_embeddings(es, batch_size=1) == 1.0


def test_in_batch_accuracy_counts_any_positive_and_ties_against() -> None:
    # Row 0's captions are ["q", "a"]; only its first caption "q" is a candidate, but row 1's first caption is
    # "a", so an image that picks "a" is still right.
    captions, positives, first = index_captions([["q", "a"], "a", "z"])
    assert captions == ["q", "a", "z"]
    texts = torch.eye(3)
    es = EmbeddingSet(texts[[1, 1, 2]], texts, captions, positives, first)
    assert in_batch_accuracy_from_embeddings(es, batch_size=3) == 1.0
    # An image exactly halfway between its caption and another row's: a tie, counted as a miss.
    halfway = torch.stack([F.normalize(texts[0] + texts[1], dim=0), texts[1], texts[2]])
    captions, positives, first = index_captions(["q", "a", "z"])
    es = EmbeddingSet(halfway, texts, captions, positives, first)
    assert in_batch_accuracy_from_embeddings(es, batch_size=3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="batch_size"):
        in_batch_accuracy_from_embeddings(es, batch_size=0)


# ----------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_scores_by_hand() -> None:
    labels = torch.eye(3)
    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.9, 0.1], [0.0, 0.8, 0.2], [0.5, 0.5, 0.0]])
    # Image 0 -> label 0 (right), image 1 -> 1 (right), image 2 -> 1 (wrong: truth 2),
    # image 3 ties labels 0 and 1 (a miss).
    assert zero_shot_scores(images, labels, torch.tensor([0, 1, 2, 0])) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="Label indices"):
        zero_shot_scores(images, labels, torch.tensor([0, 1, 2, 3]))


def test_scores_from_embeddings_combines_metrics() -> None:
    images, texts = from_score_matrix([[0.9, 0.1], [0.8, 0.2]])
    captions, positives, first = index_captions(["a", "b"])
    es = EmbeddingSet(images, texts, captions, positives, first)
    results = scores_from_embeddings(es, ks=(1,), in_batch_size=2)
    # Image 1 prefers text "a" (0.8 > 0.2); each text's best image is its own (0.9 > 0.8, 0.2 > 0.1).
    assert results == {"image_to_text_recall@1": 0.5, "text_to_image_recall@1": 1.0, "in_batch_accuracy": 0.5}
    assert "in_batch_accuracy" not in scores_from_embeddings(es, ks=(1,), in_batch_size=None)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(evaluation).failed == 0


# ----------------------------------------------------------------------------------- evaluate module


def test_evaluate_module_loads_offline_and_agrees(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(12, 16, generator=generator), dim=-1)
    captions, positives, first = index_captions(
        [["c0", "c1"], "c2", "c3", "c2", ["c4", "c5", "c6"], "c7", "c8", "c9", "c0", "c10", "c11", "c12"]
    )
    texts = F.normalize(torch.randn(len(captions), 16, generator=generator), dim=-1)
    es = EmbeddingSet(images, texts, captions, positives, first)
    expected = retrieval_scores(images, texts, positives, ks=(1, 3, 5, 20))
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(es.metric_inputs()))
    # A fresh interpreter with every Hugging Face offline switch on and empty caches: loading by path must
    # need nothing from the network.
    script = (
        "import evaluate, json, sys\n"
        "from clip_trl.evaluation import CLIP_RETRIEVAL_METRIC_PATH\n"
        "metric = evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)\n"
        "print(json.dumps(metric.compute(**json.load(open(sys.argv[1])), ks=[1, 3, 5, 20])))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(inputs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_evaluate_module_matches_retrieval_scores_with_ties_and_directions() -> None:
    import evaluate

    metric = evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)
    images, texts = from_score_matrix([[0.5, 0.5, 0.1], [0.2, 0.9, 0.1], [0.0, 0.0, 0.3]])
    positives = torch.eye(3, dtype=torch.bool)
    es = EmbeddingSet(images, texts, ["a", "b", "c"], positives, torch.arange(3))
    assert metric.compute(**es.metric_inputs(), ks=[1, 2]) == retrieval_scores(
        images, texts, positives, (1, 2)
    )
    one_way = metric.compute(**es.metric_inputs(), ks=1, direction="image_to_text")
    assert one_way == {"image_to_text_recall@1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="no positive"):
        metric.compute(predictions=[[0.1, 0.2]], references=[[]], ks=[1])


# ------------------------------------------------------------------------------ end to end, tiny CLIP


def _fallback_tiny_clip() -> tuple[Any, Any]:
    """A tiny CLIPModel + CLIPProcessor with a word-level tokenizer, for when clip_trl.offline is absent."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    words = ("a", "photo", "of", "the", "red", "green", "blue", "cat", "dog", "car", "tree", "bird", "fish")
    vocab = {"<pad>": 0, "<unk>": 1, "<|startoftext|>": 2, "<|endoftext|>": 3}
    vocab.update({word: i + 4 for i, word in enumerate((*words, "one", "two"))})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=77,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tiny_clip() -> tuple[Any, Any]:
    try:
        from clip_trl.offline import build_clip
    except ImportError:
        return _fallback_tiny_clip()
    return build_clip("tiny")


def _image(seed: int, mode: str = "RGB", size: tuple[int, int] = (40, 36)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    if mode == "RGBA":
        alpha = np.random.default_rng(seed + 100).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
        image = image.copy()
        image.putalpha(Image.fromarray(alpha, mode="L"))
        return image
    return image.convert(mode)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ROW_CAPTIONS: list[Any] = [
    ["a photo of a red cat", "a red cat"],
    "a blue dog",
    "a green tree",
    "a blue dog",  # the same caption as row 1: one text, two positive images
    "one bird",
    ["two fish", "a photo of two fish", "fish"],
    "a car",
]
LABELS = ["cat", "dog", "tree", "bird", "fish", "car"]
ROW_LABELS = [0, 1, 2, 1, 3, 4, 5]


def _rows(modes: tuple[str, ...] = ("RGB",)) -> list[dict[str, Any]]:
    return [
        {"image": _image(i, modes[i % len(modes)]), "caption": caption, "label": ROW_LABELS[i]}
        for i, caption in enumerate(ROW_CAPTIONS)
    ]


def _by_hand(model: Any, processor: Any, rows: list[dict[str, Any]]) -> EmbeddingSet:
    """Embeddings straight from `get_image_features` / `get_text_features`, one batch each."""
    images = [load_image(row["image"]) for row in rows]
    captions, positives, first = index_captions([row["caption"] for row in rows])
    with torch.no_grad():
        pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image_out = model.get_image_features(pixel_values=pixel_values)
        tokens = processor.tokenizer(
            captions, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        text_out = model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
    as_tensor = lambda out: out if isinstance(out, torch.Tensor) else out.pooler_output  # noqa: E731
    return EmbeddingSet(
        F.normalize(as_tensor(image_out), dim=-1),
        F.normalize(as_tensor(text_out), dim=-1),
        captions,
        positives,
        first,
    )


def _hf_dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "label": datasets.ClassLabel(names=LABELS),
        }
    )
    as_lists = [
        {**row, "caption": [row["caption"]] if isinstance(row["caption"], str) else row["caption"]}
        for row in rows
    ]
    return datasets.Dataset.from_list(as_lists, features=features)


def test_compute_embeddings_matches_model_features(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows(("RGB", "RGBA", "L"))
    expected = _by_hand(model, processor, rows)
    es = compute_embeddings(model, processor, rows, batch_size=3)
    assert es.captions == expected.captions
    assert es.captions.count("a blue dog") == 1
    assert torch.equal(es.positives, expected.positives)
    assert torch.equal(es.first_caption, expected.first_caption)
    assert es.image_embeds.dtype == es.text_embeds.dtype == torch.float32
    assert es.image_embeds.device.type == es.text_embeds.device.type == "cpu"
    assert es.image_embeds.shape == (len(rows), expected.image_embeds.shape[1])
    torch.testing.assert_close(es.image_embeds.norm(dim=-1), torch.ones(len(rows)))
    torch.testing.assert_close(es.image_embeds, expected.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(es.text_embeds, expected.text_embeds, atol=1e-5, rtol=1e-4)


def test_retrieval_metrics_equal_scores_on_hand_embeddings(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    expected = _by_hand(model, processor, rows)
    ks = (1, 2, 5, 10)
    want = retrieval_scores(expected.image_embeds, expected.text_embeds, expected.positives, ks)
    assert retrieval_metrics(model, processor, rows, ks=ks, batch_size=64) == want
    # The same numbers whatever the container: a Dataset (with Image and ClassLabel features) and a stream.
    dataset = _hf_dataset(rows)
    assert retrieval_metrics(model, processor, dataset, ks=ks) == want
    assert retrieval_metrics(model, processor, dataset.to_iterable_dataset(), ks=ks) == want


def test_evaluate_all_agrees_with_each_metric(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    dataset = _hf_dataset(_rows(("RGB", "L")))
    results = evaluate_all(model, processor, dataset, ks=(1, 5), in_batch_size=3, candidate_labels=LABELS)
    assert set(results) == {
        "image_to_text_recall@1",
        "image_to_text_recall@5",
        "text_to_image_recall@1",
        "text_to_image_recall@5",
        "in_batch_accuracy",
        "zero_shot_accuracy",
    }
    assert {k: v for k, v in results.items() if "recall" in k} == retrieval_metrics(
        model, processor, dataset, ks=(1, 5)
    )
    assert (
        results["in_batch_accuracy"]
        == in_batch_accuracy(model, processor, dataset, batch_size=3)["in_batch_accuracy"]
    )
    assert (
        results["zero_shot_accuracy"]
        == zero_shot_accuracy(model, processor, dataset, labels=LABELS)["zero_shot_accuracy"]
    )
    without_labels = evaluate_all(model, processor, dataset, ks=(1,))
    assert "zero_shot_accuracy" not in without_labels


def test_in_batch_accuracy_end_to_end(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    expected = in_batch_accuracy_from_embeddings(_by_hand(model, processor, rows), batch_size=3)
    assert in_batch_accuracy(model, processor, rows, batch_size=3) == {"in_batch_accuracy": expected}


def test_zero_shot_accuracy_end_to_end(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    images = _by_hand(model, processor, rows).image_embeds
    label_embeds = _label_embeds(model, processor, LABELS)
    expected = zero_shot_scores(images, label_embeds, torch.tensor(ROW_LABELS))
    assert zero_shot_accuracy(model, processor, rows, labels=LABELS) == {"zero_shot_accuracy": expected}
    # Label names work as well as indices, and precomputed image embeddings skip re-encoding.
    named = [{**row, "label": LABELS[row["label"]]} for row in rows]
    assert zero_shot_accuracy(model, processor, named, labels=LABELS)["zero_shot_accuracy"] == expected
    reused = zero_shot_accuracy(model, processor, named, labels=LABELS, image_embeds=images)
    assert reused["zero_shot_accuracy"] == expected


def _label_embeds(model: Any, processor: Any, labels: list[str]) -> torch.Tensor:
    prompts = [f"a photo of a {label}." for label in labels]
    with torch.no_grad():
        tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
        out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)


def test_zero_shot_class_label_order_is_respected(tiny_clip: tuple[Any, Any]) -> None:
    # The dataset's ClassLabel lists the classes in another order than `labels`: integer cells are read by
    # name. Images set to exactly their true class's prompt embedding score 1.0 only if the mapping is right.
    model, processor = tiny_clip
    dataset = _hf_dataset(_rows())
    reordered = list(reversed(LABELS))
    images = _label_embeds(model, processor, LABELS)[ROW_LABELS]
    for labels in (LABELS, reordered):
        result = zero_shot_accuracy(model, processor, dataset, labels=labels, image_embeds=images)
        assert result == {"zero_shot_accuracy": 1.0}
    # Plain integers (no ClassLabel) index `labels` itself, so the reversed list now points elsewhere.
    rows = _rows()
    wrong = zero_shot_accuracy(model, processor, rows, labels=reordered, image_embeds=images)
    assert wrong["zero_shot_accuracy"] < 1.0


def test_zero_shot_unknown_label_names_the_row(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    rows[4]["label"] = "zebra"
    with pytest.raises(ValueError, match=r"Row 4, column 'label': unknown label 'zebra'"):
        zero_shot_accuracy(model, processor, rows, labels=LABELS)
    rows[4]["label"] = 17
    with pytest.raises(ValueError, match=r"Row 4, column 'label'.*index 17"):
        zero_shot_accuracy(model, processor, rows, labels=LABELS)
    with pytest.raises(ValueError, match="duplicates"):
        zero_shot_accuracy(model, processor, _rows(), labels=["cat", "cat"])


def test_corrupt_image_names_row_and_column(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    rows[2]["image"] = {"bytes": b"this is not a png", "path": None}
    with pytest.raises(BadRowError, match=r"Row 2, column 'image'") as raised:
        compute_embeddings(model, processor, rows)
    assert (raised.value.row, raised.value.column) == (2, "image")
    # Inside a datasets.Dataset the image is decoded by us, not by `datasets`, so the row is still named.
    import datasets

    good = _png(_image(0))
    dataset = datasets.Dataset.from_dict(
        {
            "picture": [{"bytes": good, "path": None}] * 3 + [{"bytes": good[:40], "path": None}],
            "text": list("abcd"),
        },
        features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")}),
    )
    with pytest.raises(BadRowError, match=r"Row 3, column 'picture'"):
        compute_embeddings(model, processor, dataset, image_column="picture", caption_column="text")


def test_bad_caption_and_missing_column(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    rows = _rows()
    rows[5]["caption"] = "   "
    with pytest.raises(BadRowError, match=r"Row 5, column 'caption'"):
        compute_embeddings(model, processor, rows)
    rows[5]["caption"] = []
    with pytest.raises(BadRowError, match=r"Row 5, column 'caption'.*empty"):
        compute_embeddings(model, processor, rows)
    with pytest.raises(ValueError, match="no column 'text'"):
        retrieval_metrics(model, processor, _hf_dataset(_rows()), caption_column="text")
    with pytest.raises(BadRowError, match=r"Row 0, column 'text'"):
        retrieval_metrics(model, processor, _rows(), caption_column="text")
    with pytest.raises(ValueError, match="empty"):
        compute_embeddings(model, processor, [])


def test_image_paths_and_custom_transform(tiny_clip: tuple[Any, Any], tmp_path: Path) -> None:
    model, processor = tiny_clip
    rows = _rows()
    expected = compute_embeddings(model, processor, rows)
    for i, row in enumerate(rows):
        path = tmp_path / f"{i}.png"
        row["image"].save(path)
        row["image"] = str(path)
    from_paths = compute_embeddings(model, processor, rows)
    torch.testing.assert_close(from_paths.image_embeds, expected.image_embeds)
    seen: list[int] = []

    def transform(images: list[Image.Image]) -> torch.Tensor:
        seen.append(len(images))
        assert all(image.mode == "RGB" for image in images)
        return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    custom = compute_embeddings(model, processor, rows, batch_size=4, image_transform=transform)
    assert seen == [4, 3]
    torch.testing.assert_close(custom.image_embeds, expected.image_embeds, atol=1e-5, rtol=1e-4)


def test_model_modes_are_restored(tiny_clip: tuple[Any, Any]) -> None:
    model, processor = tiny_clip
    seen_training: list[bool] = []
    hook = model.vision_model.register_forward_hook(
        lambda module, args, out: seen_training.append(module.training)
    )
    try:
        model.train()
        model.text_model.eval()  # a deliberately frozen tower stays in eval mode afterwards
        evaluate_all(model, processor, _rows(), ks=(1,), candidate_labels=LABELS)
        assert seen_training and not any(seen_training)  # ran in eval mode
        assert model.training and model.vision_model.training
        assert not model.text_model.training
        assert all(not m.training for m in model.text_model.modules())
        model.eval()
        compute_embeddings(model, processor, _rows())
        assert not any(m.training for m in model.modules())
    finally:
        hook.remove()
        model.eval()


def test_low_precision_model_gives_float32_embeddings(tiny_clip: tuple[Any, Any]) -> None:
    import copy

    model, processor = tiny_clip
    half = copy.deepcopy(model).to(torch.bfloat16)
    es = compute_embeddings(half, processor, _rows())
    assert es.image_embeds.dtype == es.text_embeds.dtype == torch.float32
    reference = compute_embeddings(model, processor, _rows())
    torch.testing.assert_close(es.image_embeds, reference.image_embeds, atol=0.05, rtol=0.05)
