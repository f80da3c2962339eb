"""Knowledge distillation of CLIP-style dual encoders: a student matches its teachers over a candidate set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedModel

from clip_trl.data.rows import content_key
from clip_trl.losses.contrastive import (
    clip_loss,
    contrastive_loss,
    gather_counts,
    gather_variable,
    positives_from_keys,
)
from clip_trl.losses.distillation import distillation_losses, normalized_weights, teacher_targets
from clip_trl.models import modeling
from clip_trl.trainer.base import ClipBaseTrainer
from clip_trl.trainer.distillation_config import ClipDistillationConfig
from clip_trl.trainer.distillation_data import (
    ClipDistillationDataCollator,
    distinct_pool_texts,
    labelled_rows,
    load_teachers,
)
from clip_trl.trainer.embedding_cache import cache_for_trainer
from clip_trl.trainer.rl_candidates import GlobalCandidates, RetrievedCandidates, resolve_candidate_pool
from clip_trl.trainer.rl_data import _UniqueTexts


class ClipDistillationTrainer(ClipBaseTrainer):
    r"""
    Distil one or more frozen teacher dual encoders into a student: for each query (an image, or a caption for
    `direction="text_to_image"`), the student's softmax over a candidate set is trained toward the teachers'
    (`target="soft"`, `T² · KL`), or toward their top candidate (`target="hard"`, pseudo-labels). See
    [`ClipDistillationConfig`] and [`clip_trl.losses.distillation`].

    The teachers score the student's own batch (its pixels and token ids: their tokenizer and image preprocessing
    must match the student's, which is checked). They are frozen, in eval mode and on the training device; with
    `candidates="labels"` their text embeddings of the prompts are computed once. Rows without a caption get the
    distillation loss only; with `contrastive_coef > 0` the rows that have one add the contrastive loss.

    Logged: `loss`, `distillation_loss`, `contrastive_loss` (when mixed in), `teacher_agreement` (the student's
    top image-to-text candidate is the teachers'), `accuracy` / `teacher_accuracy` (the top candidate is the row's
    caption or label, where known), `teacher_entropy`.

    Args:
        model (`str` or `PreTrainedModel`): the student: a hub id, a local folder or a model.
        teacher_model (model, `str`, or a list of them, *optional*): the teacher(s); `None` uses
            `args.teacher_model_name_or_path`. Weighted by `args.teacher_weights`.
        args ([`ClipDistillationConfig`], *optional*): training configuration.
        train_dataset / eval_dataset: rows with an image column, and a caption (optional per row, except for
            in-batch candidates), a candidate list or a label column.
        processing_class (*optional*): the student's processor; loaded from `model` when it is a string/path.
        peft_config (`peft.PeftConfig`, *optional*): train LoRA adapters of the student only.

    Example:

    ```python
    >>> from clip_trl import ClipDistillationConfig, ClipDistillationTrainer
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> data = load_emoji_dataset(max_examples=32)["train"]
    >>> student, processor = build_clip("tiny", seed=0)
    >>> teacher, _ = build_clip("tiny", seed=1)
    >>> args = ClipDistillationConfig(output_dir="/tmp/clip-distill", max_steps=2, per_device_train_batch_size=8,
    ...                               temperature=2.0, logging_steps=1, report_to="none", save_strategy="no")
    >>> trainer = ClipDistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
    ...                                   processing_class=processor)
    >>> _ = trainer.train()
    >>> "distillation_loss" in trainer.state.log_history[0], trainer.teachers[0].training
    (True, False)

    ```
    """

    _method_name = "distillation"
    _config_class = ClipDistillationConfig
    _tag_names = ["clip_trl", "distillation"]

    args: ClipDistillationConfig

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        teacher_model: Any = None,
        args: ClipDistillationConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if teacher_model is None and args is not None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None:  # before the student loads: a missing teacher should not cost a download
            load_teachers(None, None, torch.device("cpu"))  # raises the message
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self.teachers, names = load_teachers(
            teacher_model, self.processing_class, self.args.device, self.args.teacher_model_init_kwargs
        )
        self.teacher_weights = normalized_weights(self.args.teacher_weights, len(self.teachers))
        self.args._card_teachers = list(zip(names, self.teacher_weights))  # what the model card names
        self._teacher_label_embeds: list[torch.Tensor] | None = None  # `candidates="labels"`: computed once
        # Teachers never train: their embeddings are cached (`cache_frozen_embeddings`; None when off).
        self._teacher_caches = [cache_for_trainer(self, f"teacher{j}") for j in range(len(self.teachers))]
        self.retrieved_candidates = None
        if self.args.candidates == "retrieved":
            pool = self.args.candidate_pool
            names_of = getattr(train_dataset, "column_names", None) or []
            column = self.args.caption_column if pool is None else pool
            if isinstance(column, str) and column in names_of:
                pool = distinct_pool_texts(train_dataset[column])  # unlabelled rows have no caption to add
            pool = resolve_candidate_pool(pool, train_dataset, self.args.caption_column)
            self.retrieved_candidates = RetrievedCandidates(
                pool,
                self.args.num_candidates,
                self.args.candidate_refresh_steps,
                self.args.include_ground_truth,
            )

    def _required_columns(self, args: ClipDistillationConfig) -> dict[str, str | None]:
        columns: dict[str, str | None] = {"image_column": args.image_column}
        if args.candidates in ("in_batch", "retrieved") or args.contrastive_coef > 0:
            columns["caption_column"] = args.caption_column
        if args.candidates == "column":
            columns["candidate_column"] = args.candidate_column
        return columns

    def _make_collator(
        self, processing_class: Any, args: ClipDistillationConfig
    ) -> ClipDistillationDataCollator:
        return ClipDistillationDataCollator(
            processing_class,
            candidates=args.candidates,
            candidate_column=args.candidate_column,
            candidate_labels=args.candidate_labels,
            label_template=args.label_template,
            label_column=args.label_column,
            contrastive=args.contrastive_coef > 0,
            **self._collator_kwargs(processing_class, args),
        )

    # ------------------------------------------------------------------------------------------ teachers

    def _teacher_embeddings(
        self, inputs: dict[str, Any]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each teacher's normalised image and text embeddings of the batch, and its logit scale (no gradient)."""
        out = []
        with torch.no_grad():
            if self.args.candidates == "labels" and self._teacher_label_embeds is None:
                # The prompts are the first texts of every label batch, in label order: embed them once.
                count = int(inputs["candidate_index"].max()) + 1
                self._teacher_label_embeds = [
                    nn.functional.normalize(
                        modeling.text_features(
                            teacher, inputs["input_ids"][:count], _rows(inputs.get("attention_mask"), count)
                        ).float(),
                        dim=-1,
                    )
                    for teacher in self.teachers
                ]
            for j, teacher in enumerate(self.teachers):
                dtype = next(teacher.parameters()).dtype
                extra = {
                    k: v for k, v in modeling.image_inputs(teacher, inputs).items() if k != "pixel_values"
                }
                pixels, cache = inputs["pixel_values"].to(dtype), self._teacher_caches[j]
                if cache is not None:
                    images = cache.features(teacher, "vision", {**inputs, "pixel_values": pixels}).float()
                else:
                    images = modeling.image_features(teacher, pixels, **extra).float()
                if self._teacher_label_embeds is not None:
                    texts = self._teacher_label_embeds[j]
                elif cache is not None:
                    texts = cache.features(teacher, "text", inputs)
                else:
                    texts = modeling.text_features(teacher, inputs["input_ids"], inputs.get("attention_mask"))
                    texts = nn.functional.normalize(texts.float(), dim=-1)
                scale = modeling.logit_scale(teacher).float()
                out.append((nn.functional.normalize(images, dim=-1), texts, scale))
        return out

    # --------------------------------------------------------------------------------------------- loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        self._pop_bookkeeping(inputs)
        args = self.args
        collective = args.gather_candidates and args.world_size > 1
        if "pixel_values" not in inputs:  # every row of this batch was a skipped bad row
            if collective:
                raise RuntimeError(
                    f"Process {args.process_index} got a batch whose rows were all skipped as bad rows; with "
                    "`gather_candidates=True` every process must bring rows to the global batch. Clean the data, "
                    "raise the batch size, or turn `gather_candidates` off."
                )
            loss = self._zero_loss(model)
            return (loss, {}) if return_outputs else loss
        if args.candidates == "retrieved":
            self._retrieve(model, inputs)
        global_candidates = None
        if collective and args.candidates == "in_batch":
            global_candidates = GlobalCandidates(inputs, "image_to_text", args.image_column)
        image_embeds, text_embeds = modeling.encode_batch(model, inputs, self._embedding_cache)
        scale = modeling.logit_scale(model)
        teachers = self._teacher_embeddings(inputs)

        def keys_of(texts: torch.Tensor) -> torch.Tensor:
            return global_candidates.embed(texts) if global_candidates is not None else texts

        candidate_index = (
            global_candidates.candidate_index if global_candidates is not None else inputs["candidate_index"]
        )
        mask = candidate_index >= 0
        index = candidate_index.clamp(min=0)
        losses: list[tuple[float, torch.Tensor]] = []
        student_keys = keys_of(text_embeds)
        if args.direction in ("image_to_text", "both"):
            student = (scale.exp() * image_embeds @ student_keys.T).gather(1, index)
            teacher = [
                (t_scale.exp() * t_images @ keys_of(t_texts).T).gather(1, index)
                for t_images, t_texts, t_scale in teachers
            ]
            targets = teacher_targets(teacher, mask, args.temperature, self.teacher_weights)
            per_query = distillation_losses(student, targets, mask, args.temperature, args.target)
            total = (
                self._global_count(per_query.shape[0], image_embeds.device)
                if collective
                else per_query.shape[0]
            )
            losses.append((args.world_size if collective else 1, per_query.sum() / total))
            truth = (
                global_candidates.overrides["target_index"]
                if global_candidates is not None
                else inputs["target_index"]
            )
            self._record_agreement(student, targets, mask, truth)
        if args.direction in ("text_to_image", "both"):
            # In-batch: every (global) caption is a query; labels: the prompts, the first texts of the batch.
            num_texts = (
                student_keys.shape[0] if args.candidates == "in_batch" else int(candidate_index.max()) + 1
            )
            t2i = self._text_to_image_loss(
                image_embeds, student_keys, scale, teachers, global_candidates, num_texts, collective
            )
            losses.append((1, t2i))
        weight = 0.5 if args.direction == "both" else 1.0
        distill = sum(factor * value for factor, value in losses) * weight
        loss = distill
        contrastive = self._contrastive(image_embeds, text_embeds, scale, inputs)
        if contrastive is not None:
            loss = loss + args.contrastive_coef * contrastive
        if model.training:
            self._record(distillation_loss=distill.detach())
            if contrastive is not None:
                self._record(contrastive_loss=contrastive.detach())
        return (loss, {"distillation_loss": distill.detach()}) if return_outputs else loss

    @staticmethod
    def _global_count(count: int, device: torch.device) -> int:
        return int(gather_counts(count, device=device).sum())

    def _text_to_image_loss(
        self,
        image_embeds: torch.Tensor,
        student_texts: torch.Tensor,
        scale: torch.Tensor,
        teachers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        global_candidates: GlobalCandidates | None,
        num_texts: int,
        collective: bool,
    ) -> torch.Tensor:
        """Each candidate text's softmax over the (global) batch's images. Under several processes each rank takes
        the texts it owns (an in-batch caption: the rank of its first copy; a label prompt: round robin), and the
        sum is divided by the global count of texts, so that DDP's average of the ranks' losses is their mean."""
        args = self.args
        counts = (
            gather_counts(image_embeds.shape[0], device=image_embeds.device)[:, 0] if collective else None
        )
        images = gather_variable(image_embeds, counts) if collective else image_embeds
        owned = torch.ones(num_texts, dtype=torch.bool, device=images.device)
        world = dist.get_world_size() if collective else 1
        if collective:
            if global_candidates is not None:
                owner = global_candidates.selection.to(images.device) // global_candidates.width
            else:
                owner = torch.arange(num_texts, device=images.device) % world
            owned = owner == dist.get_rank()
        student = scale.exp() * student_texts[:num_texts][owned] @ images.T
        teacher = []
        for t_images, t_texts, t_scale in teachers:
            t_all = gather_variable(t_images, counts, with_grad=False) if collective else t_images
            if global_candidates is not None:
                t_texts = global_candidates.embed(t_texts)
            teacher.append(t_scale.exp() * t_texts[:num_texts][owned] @ t_all.T)
        targets = teacher_targets(teacher, None, args.temperature, self.teacher_weights)
        per_query = distillation_losses(student, targets, None, args.temperature, args.target)
        return per_query.sum() * world / num_texts

    def _contrastive(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        scale: torch.Tensor,
        inputs: dict[str, Any],
    ) -> torch.Tensor | None:
        """The contrastive loss over this batch's labelled rows (local to each process), or None."""
        labelled = labelled_rows(inputs.get("caption_index"))
        if self.args.contrastive_coef == 0 or labelled is None or int(labelled.sum()) < 2:
            return None
        images = image_embeds[labelled]
        captions = text_embeds[inputs["caption_index"][labelled]]
        image_keys, caption_keys = inputs["image_keys"][labelled], inputs["caption_keys"][labelled]
        if self.args.world_size == 1:
            return contrastive_loss(images, captions, scale, image_keys=image_keys, caption_keys=caption_keys)
        positives = positives_from_keys(
            image_keys, caption_keys, image_keys, caption_keys, len(images), len(images)
        )
        return clip_loss(images, captions, scale, positives)

    def _record_agreement(
        self, student: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor
    ) -> None:
        student = student.detach().masked_fill(~mask, float("-inf"))
        top, teacher_top = student.argmax(dim=1), targets.argmax(dim=1)
        entropy = -(targets * targets.clamp(min=1e-30).log()).sum(dim=1)
        self._record(teacher_agreement=(top == teacher_top).float().mean(), teacher_entropy=entropy.mean())
        known = truth >= 0
        if known.any():
            self._record(
                accuracy=(top[known] == truth[known]).float().mean(),
                teacher_accuracy=(teacher_top[known] == truth[known]).float().mean(),
            )

    def _retrieve(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        """`candidates="retrieved"`: each image's top-k pool texts under the student, tokenised into the batch
        (labelled rows' captions after them, for the contrastive loss)."""
        pool = self.retrieved_candidates
        step = self.state.global_step
        if pool.needs_refresh(step):
            pool.refresh(model, self.data_collator.tokenizer, step, self.args.device)
        with torch.no_grad():
            queries = modeling.image_features(model, inputs["pixel_values"])
        sets = pool.select(queries, inputs["captions"])
        texts = _UniqueTexts()
        positions = [[texts.add(t) for t in names] for names in sets]
        device = inputs["pixel_values"].device
        if self.args.contrastive_coef > 0:
            captions = [c[0] if c else None for c in inputs["captions"]]
            inputs["caption_index"] = torch.tensor(
                [texts.add(c) if c is not None else -1 for c in captions], device=device
            )
            inputs["caption_keys"] = torch.tensor(
                [content_key(c) if c is not None else 0 for c in captions], device=device
            )
        tokens = self.data_collator.tokenize(texts.items)
        inputs.update({key: value.to(device) for key, value in tokens.items()})
        width = max(len(p) for p in positions)
        inputs["candidate_index"] = torch.tensor(
            [p + [-1] * (width - len(p)) for p in positions], device=device
        )
        inputs["target_index"] = torch.tensor(
            [
                next((names.index(c) for c in caps if c in names), -1)
                for names, caps in zip(sets, inputs["captions"])
            ],
            device=device,
        )
        inputs["candidates"] = inputs["candidate_texts"] = sets


def _rows(tensor: torch.Tensor | None, count: int) -> torch.Tensor | None:
    return None if tensor is None else tensor[:count]
