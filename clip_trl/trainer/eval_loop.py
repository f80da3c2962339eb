"""`Trainer.evaluate` for dual encoders: retrieval metrics over the whole eval set, set by set for named sets."""

from __future__ import annotations

import time
from typing import Any

from torch import nn


class RetrievalEvaluationMixin:
    """`evaluate` for the clip_trl trainers (mixed into `ClipBaseTrainer`, before `Trainer`)."""

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Retrieval metrics over the whole evaluation set (not a per-batch average).

        Returns `{prefix}_image_to_text_recall@k`, `{prefix}_text_to_image_recall@k`, `{prefix}_in_batch_accuracy`,
        `{prefix}_loss` (the training loss over consecutive eval batches) and, with `candidate_labels`,
        `{prefix}_zero_shot_accuracy`.

        A dict of named eval sets (e.g. `{"in_domain": ..., "retention": ...}`, given to the trainer or here) is
        evaluated set by set, each metric named `{prefix}_{name}_...` — evaluations during training then show
        forgetting as it happens. `eval_dataset="retention"` evaluates one named set of the trainer's dict.
        """
        if isinstance(eval_dataset, str):  # a name of the trainer's eval sets (as `Trainer.evaluate` accepts)
            named = self._raw_eval_dataset
            if not isinstance(named, dict) or eval_dataset not in named:
                have = (
                    f"its eval sets are {sorted(named)}"
                    if isinstance(named, dict)
                    else "it has no named eval sets"
                )
                raise KeyError(
                    f"No eval set named {eval_dataset!r}: {have}. Pass `eval_dataset` as a dict of named sets."
                )
            eval_dataset = named[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self._raw_eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        if dataset is None:
            raise ValueError(
                "Evaluation needs an `eval_dataset` (pass one to the trainer or to `evaluate()`)."
            )
        from clip_trl.evaluation.metrics import zero_shot_accuracy
        from clip_trl.evaluation.scores import scores_from_embeddings
        from clip_trl.trainer.sharded_eval import compute_embeddings

        self._memory_tracker.start()
        start = time.time()
        model = self.accelerator.unwrap_model(self.model)
        # Under several processes each rank embeds its block of rows, and every rank gets the whole set.
        embeddings = compute_embeddings(
            model,
            self.processing_class,
            dataset,
            image_column=self.args.image_column,
            caption_column=self.args.caption_column,
            batch_size=self.args.per_device_eval_batch_size,
            image_transform=self._image_transform(self.processing_class, self.args),
            max_length=self.args.max_length,  # the collators' token limit: the same tokens as in training
        )
        results = scores_from_embeddings(
            embeddings, ks=tuple(self.args.eval_ks), in_batch_size=self.args.eval_in_batch_size
        )
        if self.args.candidate_labels:
            results.update(
                zero_shot_accuracy(
                    model,
                    self.processing_class,
                    dataset,
                    labels=self.args.candidate_labels,
                    template=self.args.label_template,
                    label_column=self.args.label_column,
                    image_column=self.args.image_column,
                    batch_size=self.args.per_device_eval_batch_size,
                    image_embeds=embeddings.image_embeds,
                )
            )
        loss = self._eval_loss(model, embeddings)
        if loss is not None:
            results["loss"] = loss
        results.update(self._eval_method_metrics(model, dataset))
        metrics = {f"{metric_key_prefix}_{name}": float(value) for name, value in results.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        metrics[f"{metric_key_prefix}_samples"] = int(embeddings.image_embeds.shape[0])
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def _eval_loss(self, model: nn.Module, embeddings: Any) -> float | None:
        """The method's loss on the eval set, in consecutive batches of `per_device_eval_batch_size`
        (`None`: the method has no sampling-free loss to report)."""
        return None

    def _eval_method_metrics(self, model: nn.Module, dataset: Any) -> dict[str, float]:
        """Metrics only the method can compute on the eval set (names without the `eval_` prefix)."""
        return {}
