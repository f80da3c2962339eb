import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_trl.losses.contrastive import (
    clip_loss,
    contrastive_loss,
    multi_positive_cross_entropy,
    positives_from_keys,
    siglip_loss,
)


def _embeddings(n: int, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(
        torch.randn(n, d, generator=g), dim=-1
    )


def _hand_clip_loss(images, texts, scale, positives):
    """Plain-Python symmetric multi-positive InfoNCE, one scalar at a time."""
    n = len(images)
    sims = [[scale * sum(a * b for a, b in zip(images[i], texts[j])) for j in range(n)] for i in range(n)]

    def direction(matrix, pos):
        total = 0.0
        for i in range(n):
            denominator = sum(math.exp(v) for v in matrix[i])
            numerator = sum(math.exp(matrix[i][j]) for j in range(n) if pos[i][j])
            total += -math.log(numerator / denominator)
        return total / n

    transposed = [[sims[j][i] for j in range(n)] for i in range(n)]
    pos_t = [[positives[j][i] for j in range(n)] for i in range(n)]
    return (direction(sims, positives) + direction(transposed, pos_t)) / 2


def test_clip_loss_matches_hand_computation():
    images, texts = _embeddings(4)
    log_scale = torch.tensor(math.log(10.0))
    eye = [[i == j for j in range(4)] for i in range(4)]
    expected = _hand_clip_loss(images.tolist(), texts.tolist(), 10.0, eye)
    assert clip_loss(images, texts, log_scale).item() == pytest.approx(expected, abs=1e-6)


def test_clip_loss_with_one_positive_is_cross_entropy():
    images, texts = _embeddings(6, seed=1)
    log_scale = torch.tensor(2.0)
    logits = log_scale.exp() * images @ texts.T
    targets = torch.arange(6)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(clip_loss(images, texts, log_scale), expected)


def test_duplicate_captions_are_positives_not_negatives():
    # Rows 0 and 2 share the caption "a photo of a dog": their text embeddings are identical.
    images, texts = _embeddings(4, seed=2)
    texts = texts.clone()
    texts[2] = texts[0]
    keys = torch.tensor([7, 8, 7, 9])
    positives = positives_from_keys(None, keys, None, keys, 4, 4)
    assert positives.tolist() == [
        [True, False, True, False],
        [False, True, False, False],
        [True, False, True, False],
        [False, False, False, True],
    ]
    expected = _hand_clip_loss(images.tolist(), texts.tolist(), math.e, positives.tolist())
    loss = contrastive_loss(images, texts, torch.tensor(1.0), caption_keys=keys)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # The plain diagonal loss would treat the twin caption as a negative and be strictly larger.
    assert clip_loss(images, texts, torch.tensor(1.0)).item() > loss.item() + 1e-3


def test_duplicate_rows_can_reach_zero_loss():
    # Two rows with the same image and caption: with the multi-positive loss a perfect model has loss -> 0,
    # whereas the diagonal loss is stuck at log(2) in both directions.
    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    keys = torch.tensor([1, 1, 2])
    loss = contrastive_loss(v, v, torch.tensor(math.log(100.0)), image_keys=keys, caption_keys=keys)
    assert loss.item() < 1e-6
    assert clip_loss(v, v, torch.tensor(math.log(100.0))).item() == pytest.approx(
        2 * math.log(2) / 3, abs=1e-4
    )


def test_multi_positive_cross_entropy_gradient_matches_autograd_of_hand_formula():
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    positives = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    multi_positive_cross_entropy(logits, positives).backward()
    probs = logits.detach().softmax(-1)
    # d/dz of -log Σ_pos p = p - p·1[pos] / Σ_pos p
    expected = probs - probs * positives / (probs * positives).sum(-1, keepdim=True)
    torch.testing.assert_close(logits.grad, expected / 3)


def test_siglip_loss_matches_hand_computation():
    images, texts = _embeddings(3, seed=3)
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-2.0)
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            logit = 10.0 * float(images[i] @ texts[j]) - 2.0
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    assert siglip_loss(images, texts, log_scale, bias).item() == pytest.approx(total / 3, abs=1e-6)
    loss = contrastive_loss(images, texts, log_scale, loss_type="siglip", logit_bias=bias)
    assert loss.item() == pytest.approx(total / 3, abs=1e-6)


def test_hard_negatives_are_extra_image_to_text_columns():
    images, texts = _embeddings(3, seed=4)
    negatives = F.normalize(torch.randn(2, 5, generator=torch.Generator().manual_seed(5)), dim=-1)
    scale = torch.tensor(1.5)
    logits_i = scale.exp() * images @ torch.cat([texts, negatives]).T
    logits_t = scale.exp() * texts @ images.T
    targets = torch.arange(3)
    expected = (F.cross_entropy(logits_i, targets) + F.cross_entropy(logits_t, targets)) / 2
    torch.testing.assert_close(
        contrastive_loss(images, texts, scale, negative_text_embeds=negatives), expected
    )


def test_unknown_loss_type_is_an_error():
    images, texts = _embeddings(2)
    with pytest.raises(ValueError, match="Unknown loss_type 'triplet'; use 'clip' or 'siglip'"):
        contrastive_loss(images, texts, torch.tensor(1.0), loss_type="triplet")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 10_000),
    loss_type=st.sampled_from(["clip", "siglip"]),
    duplicate=st.booleans(),
)
def test_permuting_the_batch_leaves_the_loss_unchanged(n, seed, loss_type, duplicate):
    images, texts = _embeddings(n, seed=seed)
    keys = torch.arange(n)
    if duplicate:  # rows 0 and 1 share a caption
        texts = texts.clone()
        texts[1] = texts[0]
        keys = keys.clone()
        keys[1] = keys[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kwargs = dict(loss_type=loss_type, logit_bias=torch.tensor(-1.0))
    original = contrastive_loss(images, texts, torch.tensor(2.0), caption_keys=keys, **kwargs)
    permuted = contrastive_loss(
        images[perm], texts[perm], torch.tensor(2.0), caption_keys=keys[perm], **kwargs
    )
    torch.testing.assert_close(permuted, original, atol=1e-5, rtol=1e-5)


def test_siglip_hard_negatives_are_extra_negative_pairs_by_hand():
    # 2 image queries, their 2 captions, and 3 hard negatives; the third negative is row 1's own caption text
    # (its key equals row 1's caption key), so for row 1 it is a positive pair.
    images, texts = _embeddings(2, seed=5)
    negatives = _embeddings(3, seed=6)[1]
    log_scale, bias = torch.tensor(math.log(4.0)), -1.5
    caption_keys, negative_keys = torch.tensor([10, 11]), torch.tensor([20, 21, 11])

    def term(image, text, sign):  # -log σ(z (4·x·y − 1.5)), one scalar at a time
        logit = 4.0 * sum(a * b for a, b in zip(image, text)) + bias
        return math.log(1 + math.exp(-sign * logit))

    keys = texts.tolist() + negatives.tolist()
    key_caption = [10, 11, 20, 21, 11]
    expected = (
        sum(
            term(
                images[i].tolist(),
                keys[j],
                1 if (j == i or (j >= 2 and key_caption[j] == caption_keys[i])) else -1,
            )
            for i in range(2)
            for j in range(5)
        )
        / 2
    )
    loss = contrastive_loss(
        images,
        texts,
        log_scale,
        caption_keys=caption_keys,
        loss_type="siglip",
        logit_bias=torch.tensor(bias),
        negative_text_embeds=negatives,
        negative_keys=negative_keys,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    without = contrastive_loss(
        images, texts, log_scale, caption_keys=caption_keys, loss_type="siglip", logit_bias=torch.tensor(bias)
    )
    assert loss.item() > without.item() + 1e-3  # the negatives were not dropped
