"""What the pipeline measures and reports: each stage's held-out metrics (retrieval, the greedy policy's
mean reward, the graded metric), the results table, `results.md` and the curves picture."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from clip_trl.evaluation.embeddings import EmbeddingSet, compute_embeddings
from clip_trl.evaluation.scores import scores_from_embeddings
from clip_trl.models import modeling
from clip_trl.rewards.graded import greedy_graded_reward
from clip_trl.rewards.scoring import RewardSet, reward_kwargs

if TYPE_CHECKING:
    import datasets
    from torch import nn

logger = logging.getLogger(__name__)


def greedy_rewards(
    embeddings: EmbeddingSet,
    dataset: datasets.Dataset,
    reward_funcs: str | Callable | Sequence[str | Callable],
    *,
    logit_scale: float,
    batch_size: int = 32,
    policy_temperature: float = 1.0,
    reward_weights: Sequence[float] | None = None,
    image_column: str = "image",
) -> dict[str, float]:
    """Mean reward of the greedy policy over in-batch candidate sets: the reward column of the results table.

    The rows are cut, in dataset order, into consecutive batches of `batch_size` (the batches of
    `in_batch_accuracy`). In each batch every image's candidates are the batch's distinct captions (each row's
    first caption), as in RL training with `candidates="in_batch"`; the policy
    `π(c|x) = softmax(logit_scale · cos(x, c) / policy_temperature)` picks its most probable candidate
    (`argmax π`, no sampling), and the reward functions score that choice with the keyword arguments the RL
    trainer passes (`ground_truth`, `probs`, `candidates`, `chosen`, `images`, the other columns). The scores are
    combined with `reward_weights` as in training and averaged over the images (an image whose rewards are all
    `None` is left out).

    With `correctness` alone the mean reward is the greedy policy's accuracy, which equals `in_batch_accuracy`
    except on exact score ties (the accuracy counts a tie as a miss, `argmax` takes the first candidate).

    Args:
        embeddings ([`~clip_trl.evaluation.embeddings.EmbeddingSet`]): the model's embeddings of `dataset`.
        dataset (`datasets.Dataset`): the rows the embeddings were computed from (for images and columns).
        reward_funcs: reward callables or built-in names, as for [`~clip_trl.ClipRLTrainer`].
        logit_scale (`float`): the model's `exp(logit_scale)`.
        batch_size (`int`, defaults to 32): candidate-set size.
        policy_temperature (`float`, defaults to 1.0): τ.
        reward_weights (`Sequence[float]`, *optional*): one weight per reward; default all 1.
        image_column (`str`, defaults to `"image"`): the column passed as `images`.

    Returns:
        `dict[str, float]`: `mean_reward`, and `rewards/{name}/mean` per reward function.

    Example:

    ```python
    >>> import datasets, torch
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> from clip_trl.scripts.pipeline_results import greedy_rewards
    >>> rows = datasets.Dataset.from_dict({"caption": ["a cat", "a dog", "a cow"]})
    >>> captions, positives, first = index_captions(rows["caption"])
    >>> images = torch.eye(3)[[0, 0, 2]]  # the dog picture looks like the cat caption
    >>> greedy_rewards(EmbeddingSet(images, torch.eye(3), captions, positives, first), rows, "correctness",
    ...                logit_scale=10.0, image_column=None)
    {'mean_reward': 0.6666666666666666, 'rewards/correctness/mean': 0.6666666666666666}

    ```
    """
    rewards = RewardSet(reward_funcs, reward_weights)
    n = embeddings.num_images
    if n == 0:
        raise ValueError("The mean reward needs at least one image.")
    others = [c for c in dataset.column_names if c != image_column]
    columns = {c: list(dataset[c]) for c in others}
    totals: list[float] = []
    per_reward: dict[str, list[float]] = {name: [] for name in rewards.names}
    texts = embeddings.text_embeds.float()
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        first_row_of_caption: dict[int, int] = {}
        for row in rows:
            first_row_of_caption.setdefault(int(embeddings.first_caption[row]), row)
        candidate_ids = list(first_row_of_caption)
        candidates = [embeddings.captions[j] for j in candidate_ids]
        candidate_rows = [{c: columns[c][row] for c in others} for row in first_row_of_caption.values()]
        logits = logit_scale * embeddings.image_embeds[rows].float() @ texts[candidate_ids].T
        probs = torch.softmax(logits / policy_temperature, dim=1)
        chosen = probs.argmax(dim=1).tolist()
        truths = []
        for row in rows:
            own = [embeddings.captions[j] for j in embeddings.positives[row].nonzero().flatten().tolist()]
            truths.append(own[0] if len(own) == 1 else own)
        query_rows = [{c: columns[c][row] for c in others} for row in rows]
        if image_column is not None and image_column in dataset.column_names:
            for query_row, image in zip(query_rows, dataset.select(rows)[image_column]):
                query_row[image_column] = image
        completions, kwargs = reward_kwargs(
            list(enumerate(chosen)),
            query_rows,
            [candidates] * len(rows),
            [candidates] * len(rows),
            truths,
            probs.tolist(),
            image_column=image_column,
            candidate_rows=candidate_rows,
        )
        scores = rewards(completions, **kwargs)
        for name, column in zip(scores.names, scores.per_function.T.tolist()):
            per_reward[name].extend(v for v in column if not math.isnan(v))
        totals.extend(scores.total[~torch.isnan(scores.total)].tolist())
    results = {"mean_reward": sum(totals) / len(totals) if totals else math.nan}
    for name, values in per_reward.items():
        results[f"rewards/{name}/mean"] = sum(values) / len(values) if values else math.nan
    return results


def evaluate_model(
    model: nn.Module,
    processor: Any,
    dataset: datasets.Dataset,
    *,
    reward_funcs: str | Callable | Sequence[str | Callable] = "correctness",
    image_column: str = "image",
    caption_column: str = "caption",
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    in_batch_size: int = 32,
    policy_temperature: float = 1.0,
    reward_weights: Sequence[float] | None = None,
) -> tuple[dict[str, float], EmbeddingSet]:
    """Every metric of the results table for one model: retrieval, in-batch accuracy and the greedy mean reward.

    The dataset is embedded once; see [`~clip_trl.evaluation.scores.scores_from_embeddings`] and [`greedy_rewards`].

    Returns:
        `tuple[dict[str, float], EmbeddingSet]`: the metrics (`image_to_text_recall@k`, `text_to_image_recall@k`,
        `in_batch_accuracy`, `mean_reward`, `rewards/{name}/mean`) and the embeddings (for pictures).

    Example:

    ```python
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> from clip_trl.scripts.pipeline_results import evaluate_model
    >>> model, processor = build_clip("tiny")
    >>> metrics, _ = evaluate_model(model, processor, load_emoji_dataset()["test"])
    >>> sorted(metrics)[:2]
    ['image_to_text_recall@1', 'image_to_text_recall@10']

    ```
    """
    embeddings = compute_embeddings(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        batch_size=batch_size,
    )
    metrics = scores_from_embeddings(embeddings, ks, in_batch_size)
    scale = float(modeling.logit_scale(model).detach().float().exp())
    metrics.update(
        greedy_rewards(
            embeddings,
            dataset,
            reward_funcs,
            logit_scale=scale,
            batch_size=in_batch_size,
            policy_temperature=policy_temperature,
            reward_weights=reward_weights,
            image_column=image_column,
        )
    )
    return metrics, embeddings


_TABLE_COLUMNS = (
    ("image_to_text_recall@1", "i→t R@1"),
    ("image_to_text_recall@5", "i→t R@5"),
    ("image_to_text_recall@10", "i→t R@10"),
    ("text_to_image_recall@1", "t→i R@1"),
    ("text_to_image_recall@5", "t→i R@5"),
    ("text_to_image_recall@10", "t→i R@10"),
    ("in_batch_accuracy", "in-batch acc"),
    ("graded_reward", "graded reward"),
)


def results_table(stages: dict[str, dict[str, float]]) -> str:
    """The results as a Markdown table: one row per stage, one column per metric (as percentages)."""
    header = "| stage | " + " | ".join(title for _, title in _TABLE_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(_TABLE_COLUMNS)]
    for stage, metrics in stages.items():
        cells = []
        for key, _ in _TABLE_COLUMNS:
            value = metrics.get(key)
            cells.append(
                "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
            )
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(path: str, results: dict[str, Any]) -> None:
    data, timing = results["data"], results["timing_seconds"]
    n_test = data["test_rows"]
    lines = [
        "# clip_trl pipeline results",
        "",
        f"Model: `{results['model']}` · data: `{results['dataset']}` "
        f"({data['train_rows']} train / {data['validation_rows']} validation / {n_test} test rows) · "
        f"seed {results['args']['seed']}.",
        "",
        f"Test split, {n_test} images and {data['test_captions']} distinct captions:",
        "",
        results_table(results["stages"]),
        "",
        f"Chance: recall@1 ≈ {1 / max(data['test_captions'], 1):.3f} (1/{data['test_captions']}), "
        f"recall@k ≈ k/{data['test_captions']}, in-batch accuracy ≈ {1 / results['args']['in_batch_size']:.3f} "
        f"(1/{results['args']['in_batch_size']}).",
        "",
        "- **i→t R@k / t→i R@k**: image-to-text / text-to-image recall@k over the whole test split.",
        f"- **in-batch acc**: the right caption among those of the image's batch of {results['args']['in_batch_size']} "
        "consecutive test rows (the original CLIP_RL_FT project's test accuracy).",
        "- **graded reward**: what the default RL recipe optimises, on held-out images: the mean reward of each "
        "test image's greedy choice among *all* test captions — 1 for its own caption, 0.5 for a caption of the "
        "same `group`, 0 otherwise (`–` without a `group` column). `results.json` also holds `mean_reward`, "
        f"the mean of the RL rewards ({', '.join(results['rewards'])}) on the greedy choice among each batch's "
        "captions.",
        "",
        f"Wall time: {timing['total']:.0f} s in all — contrastive training {timing['contrastive_train']:.0f} s, "
        f"RL training {timing['rl_train']:.0f} s.",
        "",
        "Models: [`clip_finetuned/`](clip_finetuned/) (contrastive) and "
        "[`clip_rl_finetuned/`](clip_rl_finetuned/) (contrastive + RL), each with its processor and model card.",
        "",
    ]
    pictures = results["pictures"]
    for key, title in (
        ("contrastive_curves", "Contrastive training"),
        ("rl_curves", "RL training"),
        ("retrieval_examples", "Retrieval examples (test images, top-3 captions per model)"),
    ):
        if pictures.get(key):
            lines += [f"## {title}", "", f"![{title}]({pictures[key]})", ""]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def plot_curves(log_history: list[dict[str, Any]], path: str) -> str | None:
    """Training curves through `clip_trl.reporting.curves` when that module is there; `None` (logged) otherwise."""
    from clip_trl.reporting.curves import plot_training_curves

    try:
        written = plot_training_curves(log_history, path)
    except Exception as error:  # a picture must never cost the results of a finished run
        logger.warning("Could not draw the training curves %s: %s", path, error)
        return None
    return os.fspath(written) if written else None


def graded_metric(embeddings: EmbeddingSet, test: datasets.Dataset) -> dict[str, float]:
    """`graded_reward` (see [`clip_trl.rewards.graded.greedy_graded_reward`]) when the test rows have a `group`."""
    if "group" not in test.column_names:
        return {}
    return {"graded_reward": greedy_graded_reward(embeddings, list(test["group"]))}
