"""Retrieval at scale: positives as an index list, the blocked top-k (and FAISS) backends give the metrics the
previous dense two-pass implementation gave (benchmarks/_retrieval_dense.py, the reference), ties included."""

import math
import sys
from pathlib import Path

import pytest
import torch

from clip_trl.evaluation import (
    EmbeddingSet,
    faiss_ranking,
    index_captions,
    retrieval_scores,
    scores_from_embeddings,
)
from clip_trl.evaluation.positives import as_positive_pairs, index_caption_pairs

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
# The previous dense two-pass implementation, kept as the reference (benchmarks/retrieval_scale.py uses it too).
from _retrieval_dense import dense_retrieval_scores as legacy_retrieval_scores  # noqa: E402

KS = (1, 2, 5, 10)


def coco_like(num_images: int, dim: int = 8, seed: int = 0, quantised: bool = False):
    """Random embeddings, 1-5 captions per image, some captions shared between images (so texts have several
    positive images too), each text near one of its images; `quantised`: entries in {-1, 0, 1}, so many scores
    tie, exactly (a tie between float scores could otherwise depend on how the matrix product is blocked)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, dim, generator=generator)
    row_captions = []
    for i in range(num_images):
        count = int(torch.randint(1, 6, (1,), generator=generator))
        row_captions.append([f"c{i}-{j}" for j in range(count)] + ([f"shared{i % 3}"] if i % 4 == 0 else []))
    captions, pairs, _ = index_caption_pairs(row_captions)
    owner = torch.zeros(len(captions), dtype=torch.long).scatter_reduce_(
        0, pairs[:, 1], pairs[:, 0], "amin", include_self=False
    )
    texts = images[owner] + 1.5 * torch.randn(
        len(captions), dim, generator=generator
    )  # near one positive image
    if quantised:  # small integers: every score exact whatever the summation order, so ties are exact too
        return images.round().clamp(-1, 1), texts.round().clamp(-1, 1), pairs
    return torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(texts, dim=1), pairs


BACKENDS = [
    {"backend": "torch"},
    {"backend": "torch", "tile_elements": 37},  # many tiles, ragged edges
    pytest.param(
        {"backend": "faiss"}, marks=pytest.mark.skipif(faiss_ranking.faiss_module() is None, reason="faiss")
    ),
]


@pytest.mark.parametrize("quantised", [False, True], ids=["distinct", "many-ties"])
@pytest.mark.parametrize("options", BACKENDS, ids=["torch", "torch-tiny-tiles", "faiss"])
def test_equal_to_the_dense_two_pass_version_with_several_captions_per_image(options, quantised):
    images, texts, pairs = coco_like(60, quantised=quantised)
    dense = torch.zeros(len(images), len(texts), dtype=torch.bool)
    dense[pairs[:, 0], pairs[:, 1]] = True
    expected = legacy_retrieval_scores(images, texts, dense, KS)
    assert 0 < expected["image_to_text_recall@1"] < 1
    per_image = [pairs[pairs[:, 0] == i, 1].tolist() for i in range(len(images))]
    for positives in (dense, pairs, per_image, pairs.flip(0)):
        assert retrieval_scores(images, texts, positives, KS, **options) == expected


@pytest.mark.parametrize("options", BACKENDS, ids=["torch", "torch-tiny-tiles", "faiss"])
def test_ties_count_against_the_query(options):
    # A degenerate model: every embedding the same, so every score ties; only k >= the candidate count hits.
    images, texts = torch.ones(6, 4) / 2, torch.ones(9, 4) / 2
    pairs = torch.tensor([[i, j] for i in range(6) for j in range(9) if j % 6 == i])
    scores = retrieval_scores(images, texts, pairs, (1, 5, 9), **options)
    assert scores["image_to_text_recall@1"] == scores["image_to_text_recall@5"] == 0.0
    assert scores["image_to_text_recall@9"] == 1.0  # k >= 9 texts: clamped, always a hit
    assert scores["text_to_image_recall@1"] == 0.0 and scores["text_to_image_recall@9"] == 1.0
    # Ties between positives never hurt: two identical positive texts and one lower negative.
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    one = retrieval_scores(
        torch.tensor([[1.0, 0.0]]), texts, torch.tensor([[0, 0], [0, 1], [0, 2]]), (1,), **options
    )
    assert one["image_to_text_recall@1"] == 1.0


def test_blocked_equals_unblocked_on_a_larger_pool():
    # 800 images: tall enough tiles for the grouped column top-k (clip_trl.evaluation.ranking.column_top_values).
    images, texts, pairs = coco_like(800, dim=16, seed=3)
    whole = retrieval_scores(
        images, texts, pairs, KS, backend="torch", tile_elements=len(images) * len(texts)
    )
    dense = torch.zeros(len(images), len(texts), dtype=torch.bool)
    dense[pairs[:, 0], pairs[:, 1]] = True
    assert whole == legacy_retrieval_scores(images, texts, dense, KS)
    for tile in (1000, 4096, 123457):
        assert retrieval_scores(images, texts, pairs, KS, backend="torch", tile_elements=tile) == whole


def test_embedding_set_from_pairs_keeps_the_dense_api():
    row_captions = [["a cat", "a kitten"], "a dog", "a cat", ["b", "c", "d", "e", "f"]]
    captions, dense, first = index_captions(row_captions)
    _, pairs, _ = index_caption_pairs(row_captions)
    images, texts = torch.randn(4, 3), torch.randn(len(captions), 3)
    images, texts = torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(texts, dim=1)
    from_dense = EmbeddingSet(images, texts, captions, dense, first)
    from_pairs = EmbeddingSet(images, texts, captions, pairs, first)
    assert torch.equal(from_pairs.positive_pairs, from_dense.positive_pairs)
    assert from_pairs._positives is None  # not built until asked for
    assert torch.equal(from_pairs.positives, dense)
    assert from_pairs.metric_inputs() == from_dense.metric_inputs()
    assert scores_from_embeddings(from_pairs, ks=(1, 2), in_batch_size=2) == scores_from_embeddings(
        from_dense, ks=(1, 2), in_batch_size=2
    )


def test_bad_index_lists_are_named():
    with pytest.raises(ValueError, match=r"Positive pair 1 has text index 7, outside \[0, 3\) \(3 texts\)"):
        as_positive_pairs(torch.tensor([[0, 0], [1, 7]]), 2, 3)
    with pytest.raises(ValueError, match=r"`positives` has 1 lists of text indices for 2 images"):
        as_positive_pairs([[0]], 2, 3)
    with pytest.raises(ValueError, match=r"1 text query has no positive image \(first: text 2\)"):
        retrieval_scores(torch.eye(3), torch.eye(3), [[0], [1]] + [[1]], (1,))
    with pytest.raises(ValueError, match=r"`backend` must be one of \('auto', 'torch', 'faiss'\), got 'x'"):
        retrieval_scores(torch.eye(2), torch.eye(2), torch.eye(2, dtype=torch.bool), (1,), backend="x")


def test_without_faiss_auto_uses_torch_and_faiss_is_a_clear_error(monkeypatch):
    images, texts, pairs = coco_like(30, seed=5)
    expected = retrieval_scores(images, texts, pairs, KS, backend="torch")
    monkeypatch.setitem(sys.modules, "faiss", None)
    faiss_ranking.faiss_module.cache_clear()
    monkeypatch.setattr(faiss_ranking, "FAISS_MIN_SCORES", 1)  # auto would pick FAISS for any pool
    try:
        assert retrieval_scores(images, texts, pairs, KS) == expected
        with pytest.raises(ImportError, match=r"`backend='faiss'` needs FAISS.*clip_trl\[faiss\]"):
            retrieval_scores(images, texts, pairs, KS, backend="faiss")
    finally:
        monkeypatch.undo()
        faiss_ranking.faiss_module.cache_clear()


@pytest.mark.parametrize("shape", [(4096, 64), (1000, 333), (3000, 50), (700, 9)])
def test_grouped_column_top_k_is_topk(shape):
    from clip_trl.evaluation.ranking import column_top_values

    generator = torch.Generator().manual_seed(shape[0])
    for scores in (
        torch.randn(shape, generator=generator),
        torch.randint(0, 4, shape, generator=generator).float(),
    ):
        scores[::7, ::3] = -math.inf  # masked positives
        expected = scores.topk(10, dim=0).values.sort(dim=0).values
        assert torch.equal(column_top_values(scores, 10).sort(dim=0).values, expected)
