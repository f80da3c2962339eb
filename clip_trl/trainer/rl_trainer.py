"""Reinforcement-learning fine-tuning of CLIP-style dual encoders: a real policy gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from clip_trl.data.rows import content_key
from clip_trl.losses.contrastive import contrastive_loss
from clip_trl.losses.policy import (
    exact_advantages,
    group_advantages,
    policy_log_probs,
    rl_loss,
    sample_actions,
)
from clip_trl.models import modeling
from clip_trl.rewards.scoring import RewardScores, RewardSet, reward_kwargs
from clip_trl.trainer.base import ClipBaseTrainer
from clip_trl.trainer.rl_candidates import (
    GlobalCandidates,
    RepeatBatchSampler,
    RetrievedCandidates,
    resolve_candidate_pool,
)
from clip_trl.trainer.rl_config import ClipRLConfig
from clip_trl.trainer.rl_data import ClipRLDataCollator, Rollout, _UniqueTexts
from clip_trl.trainer.rl_lists import list_rollout
from clip_trl.trainer.rl_metrics import step_metrics
from clip_trl.trainer.rollout_logging import RolloutLoggingCallback

RewardFunc = Callable[..., list]


class ClipRLTrainer(ClipBaseTrainer):
    r"""
    Fine-tune a CLIP-style dual encoder as a policy that picks a caption for an image (or an image for a
    caption), with pluggable reward functions and a policy-gradient update.

    Each step embeds the batch's images and its distinct candidate texts once, forms
    `π(c|x) = softmax(s(x, c) / τ)`, samples `num_samples` actions per query (or scores every candidate for
    `advantage="exact"`), calls the reward functions on them, and minimises
    `-mean(A · log π(a|x)) + β · KL(π ‖ π_ref) - entropy_coef · H(π)`. See [`ClipRLConfig`].

    Args:
        model (`str` or `PreTrainedModel`): a hub id, a local folder (e.g. a contrastive checkpoint) or a model.
        reward_funcs (callable, `str`, or a list of them): reward functions
            `f(completions, **kwargs) -> list[float | None]`, or names of built-ins in [`clip_trl.rewards`].
        args ([`ClipRLConfig`], *optional*): training configuration.
        train_dataset / eval_dataset: rows with an image column and (depending on the candidate set) a caption,
            a candidate list or a label column; extra columns are passed to the reward functions.
        processing_class (*optional*): a CLIP processor; loaded from `model` when it is a string/path.
        peft_config (`peft.PeftConfig`, *optional*): train adapters; the reference policy is then the same model
            with its adapters disabled (no second copy of the weights).

    Example:

    ```python
    >>> from clip_trl import ClipRLConfig, ClipRLTrainer
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> data = load_emoji_dataset(max_examples=64)
    >>> model, processor = build_clip("tiny")
    >>> args = ClipRLConfig(output_dir="/tmp/clip-rl", max_steps=2, per_device_train_batch_size=8, num_samples=4,
    ...                     logging_steps=1, report_to="none", save_strategy="no")
    >>> trainer = ClipRLTrainer(model=model, reward_funcs="correctness", args=args,
    ...                         train_dataset=data["train"], processing_class=processor)
    >>> _ = trainer.train()
    >>> logs = trainer.state.log_history[0]  # one entry per step
    >>> sorted(name for name in logs if name.startswith("rewards/"))
    ['rewards/correctness/expected', 'rewards/correctness/mean', 'rewards/correctness/std']
    >>> logs["reward"] == logs["rewards/correctness/mean"] and 0.0 <= logs["accuracy"] <= 1.0
    True

    ```
    """

    _method_name = "rl"
    _config_class = ClipRLConfig
    _tag_names = ["clip_trl", "rl"]

    args: ClipRLConfig

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        reward_funcs: RewardFunc | str | list[RewardFunc | str],
        args: ClipRLConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if "reward_weights" in kwargs:  # as in TRL, a config field; Trainer's bare TypeError would not say so
            raise TypeError(
                "`reward_weights` is a `ClipRLConfig` field, not a trainer argument: pass "
                "`args=ClipRLConfig(..., reward_weights=[...])` (one weight per reward function)."
            )
        # Checked before the model loads: a typo in a reward name should not cost a model download.
        self.rewards = RewardSet(reward_funcs, args.reward_weights if args is not None else None)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self.ref_model = None
        if self.args.beta > 0:
            self._create_reference_model()  # a frozen copy; with peft, the adapters disabled
        self._micro_step = (-1, 0)
        self.retrieved_candidates = None
        if self.args.candidates == "retrieved":
            pool = resolve_candidate_pool(self.args.candidate_pool, train_dataset, self.args.caption_column)
            self.retrieved_candidates = RetrievedCandidates(
                pool,
                self.args.num_candidates,
                self.args.candidate_refresh_steps,
                self.args.include_ground_truth,
            )
        # `num_iterations > 1`: the rollouts of the current optimizer step's micro-batches, by micro-step.
        self._rollouts: dict[int, Rollout] = {}
        self._rollout_micro = (-1, 0)
        self.rollout_logging = None
        if self.args.log_rollouts:
            self.rollout_logging = RolloutLoggingCallback(self)
            self.add_callback(self.rollout_logging)
        if (
            self.args.num_iterations > 1
            and train_dataset is not None
            and not hasattr(train_dataset, "__len__")
        ):
            raise ValueError(
                "`num_iterations > 1` serves each batch several times in a row, which needs a map-style "
                "`train_dataset` (with a length); an IterableDataset streams each row once. Use "
                "`num_iterations=1` or a `datasets.Dataset`."
            )

    @property
    def reward_funcs(self) -> list[RewardFunc]:
        return self.rewards.funcs

    @property
    def reward_names(self) -> list[str]:
        return self.rewards.names

    @property
    def reward_weights(self) -> torch.Tensor:
        return self.rewards.weights

    def _required_columns(self, args: ClipRLConfig) -> dict[str, str | None]:
        columns: dict[str, str | None] = {"image_column": args.image_column}
        if args.candidates == "in_batch" or args.contrastive_coef > 0:
            columns["caption_column"] = args.caption_column
        if args.candidates == "column":
            columns["candidate_column"] = args.candidate_column
        if args.candidates == "retrieved":
            columns["caption_column"] = args.caption_column
        return columns

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.args.num_iterations == 1:
            return (
                super()._get_train_sampler(train_dataset)
                if train_dataset is not None
                else super()._get_train_sampler()
            )
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            return None
        args = self.args
        group = args.per_device_train_batch_size * max(args.world_size, 1) * args.gradient_accumulation_steps
        return RepeatBatchSampler(len(dataset), group, args.num_iterations, args.seed)

    def _make_collator(self, processing_class: Any, args: ClipRLConfig) -> ClipRLDataCollator:
        return ClipRLDataCollator(
            processing_class,
            candidates=args.candidates,
            direction=args.direction,
            candidate_column=args.candidate_column,
            candidate_labels=args.candidate_labels,
            label_template=args.label_template,
            label_column=args.label_column,
            include_captions=args.contrastive_coef > 0,
            **self._collator_kwargs(processing_class, args),
        )

    # --------------------------------------------------------------------------------------------- policy

    def _policy_log_probs(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        scale: torch.Tensor,
        inputs: dict[str, Any],
        global_candidates: GlobalCandidates | None = None,
    ) -> torch.Tensor:
        """`log π(c|x)` `[B, K]` for every query over its (padded) candidate list."""
        if self.args.direction == "image_to_text":
            queries, keys = image_embeds, text_embeds
        else:
            # Candidates are the batch's distinct images, embedded from the first row holding each.
            queries, keys = text_embeds[inputs["caption_index"]], image_embeds[inputs["distinct_image_rows"]]
        candidate_index = inputs["candidate_index"]
        if global_candidates is not None:
            keys = global_candidates.embed(keys)
            candidate_index = global_candidates.candidate_index
        mask = candidate_index >= 0
        logits = scale.exp() * queries @ keys.T
        logits = logits.gather(1, candidate_index.clamp(min=0))
        return policy_log_probs(logits.float(), mask, self.args.policy_temperature)

    def _generator(self) -> torch.Generator:
        """Seeded by (seed, step, micro-step, rank): sampling replays exactly after a resume, with no state."""
        step = self.state.global_step
        micro = self._micro_step[1] + 1 if self._micro_step[0] == step else 0
        self._micro_step = (step, micro)
        seed = np.random.SeedSequence([self.args.seed, step, micro, self.args.process_index]).generate_state(
            1
        )[0]
        return torch.Generator().manual_seed(int(seed))

    # --------------------------------------------------------------------------------------------- loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        row_index = inputs.get("row_index")
        self._pop_bookkeeping(inputs)
        if "pixel_values" not in inputs:  # every row of this batch was a skipped bad row
            if self.args.gather_candidates and self.args.world_size > 1:
                # The other ranks wait in the candidate gather for this one; failing here lets the launcher stop
                # them all instead of hanging.
                raise RuntimeError(
                    f"Process {self.args.process_index} got a batch whose rows were all skipped as bad rows; with "
                    "`gather_candidates=True` every process must bring candidates to the global set. Clean the "
                    "data, raise the batch size, or turn `gather_candidates` off."
                )
            loss = self._zero_loss(model)
            return (loss, {}) if return_outputs else loss
        args = self.args
        rollout, slot = None, None
        if model.training and args.num_iterations > 1:
            rollout, slot = self._buffered_rollout(row_index)
        if rollout is not None:
            inputs.update(rollout.candidate_inputs)  # the candidate sets the rollout was scored on
        elif args.candidates == "retrieved":
            self._retrieve(model, inputs)
        global_candidates = None
        if args.gather_candidates:
            # Before the forward: every rank must join the same collectives in the same order.
            global_candidates = GlobalCandidates(inputs, args.direction, args.image_column)
            inputs.update(global_candidates.overrides)
        image_embeds, text_embeds = modeling.encode_batch(model, inputs, self._embedding_cache)
        scale = modeling.logit_scale(model)
        log_probs = self._policy_log_probs(image_embeds, text_embeds, scale, inputs, global_candidates)

        ref_log_probs = None
        if args.beta > 0:
            with torch.no_grad(), self._reference(model) as reference:
                ref_images, ref_texts = modeling.encode_batch(reference, inputs, self._reference_cache)
                ref_log_probs = self._policy_log_probs(
                    ref_images, ref_texts, modeling.logit_scale(reference), inputs, global_candidates
                )

        if rollout is None:
            rollout = self._make_rollout(inputs, log_probs)
            if slot is not None:
                rollout.row_index = row_index
                self._rollouts[slot] = rollout
            if self.rollout_logging is not None and model.training:
                self.rollout_logging.capture(
                    rollout.entries,
                    log_probs,
                    rollout.scores,
                    self._entry_advantages(rollout, log_probs),
                    inputs,
                )
        actions, reward_matrix, advantages = rollout.actions, rollout.rewards, rollout.advantages
        out = rl_loss(
            log_probs,
            actions=actions,
            advantages=advantages,
            rewards=reward_matrix,
            ref_log_probs=ref_log_probs,
            beta=args.beta,
            entropy_coef=args.entropy_coef,
            # With one update per rollout the loss is the plain policy gradient (ratio ≡ 1).
            old_log_probs=rollout.old_log_probs if args.num_iterations > 1 else None,
            epsilon_low=args.epsilon,
            epsilon_high=args.epsilon_high,
        )
        if out.clip_fraction is not None and model.training:
            self._record(clip_ratio=out.clip_fraction)
        loss = out.loss
        if args.contrastive_coef > 0:
            captions = text_embeds[inputs["caption_index"]]
            supervised = contrastive_loss(
                image_embeds,
                captions,
                scale,
                image_keys=inputs.get("image_keys"),
                caption_keys=inputs.get("caption_keys"),
            )
            loss = loss + args.contrastive_coef * supervised
            self._record(contrastive_loss=supervised.detach())
        if (
            model.training
        ):  # the expectations under π, the objective and the loss parts (trainer/rl_metrics.py)
            metrics = step_metrics(
                log_probs,
                rollout,
                inputs["target_index"],
                out,
                beta=args.beta,
                entropy_coef=args.entropy_coef,
            )
            self._record(**metrics)
        return (loss, {"log_probs": log_probs.detach()}) if return_outputs else loss

    def _make_rollout(self, inputs: dict[str, Any], log_probs: torch.Tensor) -> Rollout:
        """Actions (or every candidate, for `"exact"`), their rewards and advantages, and `log π_old`."""
        args = self.args
        if args.list_size:  # a ranked list per action (trainer/rl_lists.py)
            return list_rollout(self, inputs, log_probs)
        if args.advantage == "exact":
            sizes = (inputs["candidate_index"] >= 0).sum(dim=1).tolist()
            actions = None
            entries = [(b, k) for b, size in enumerate(sizes) for k in range(size)]
        else:
            actions = sample_actions(log_probs, args.num_samples, self._generator())
            entries = [(b, int(a)) for b, row in enumerate(actions.tolist()) for a in row]
        scores = self._score(entries, inputs, log_probs)
        rewards = scores.total.to(log_probs.device)  # [len(entries)], NaN = no reward applies
        if actions is None:
            reward_matrix = torch.full(log_probs.shape, float("nan"), device=log_probs.device)
            rows, cols = zip(*entries)
            reward_matrix[list(rows), list(cols)] = rewards
            advantages = None
        else:
            reward_matrix = rewards.view(actions.shape)
            advantages = group_advantages(reward_matrix, args.advantage, args.scale_rewards)
        candidate_inputs = {}
        if args.num_iterations > 1:
            # Later updates score the same texts (retrieved sets change with the model; a caption list is
            # sampled anew by the collator), so the rollout keeps the batch's text side.
            keys = (
                "input_ids",
                "attention_mask",
                "candidate_index",
                "target_index",
                "candidates",
                "candidate_texts",
                "candidate_rows",
                "ground_truth",
                "caption_index",
                "caption_keys",
            )
            candidate_inputs = {key: inputs[key] for key in keys if key in inputs}
        return Rollout(
            actions, reward_matrix, advantages, log_probs.detach(), candidate_inputs, entries, scores
        )

    @staticmethod
    def _entry_advantages(rollout: Rollout, log_probs: torch.Tensor) -> torch.Tensor:
        """One advantage per scored entry, in entry order: the sampled actions' group advantages, or (exact
        mode) each candidate's `r - E_π[r]`."""
        if rollout.advantages is not None:
            return rollout.advantages.flatten()
        advantages = exact_advantages(log_probs.detach().exp(), rollout.rewards)
        rows, cols = zip(*rollout.entries)
        return advantages[list(rows), list(cols)]

    def _buffered_rollout(self, row_index: torch.Tensor | None) -> tuple[Rollout | None, int]:
        """`num_iterations > 1`: the stored rollout of this micro-batch, or None when one must be made.

        Step `s` is update `s % num_iterations` of its rollout (the sampler serves each step's rows that many
        times in a row); micro-batch `m` of the step reuses the rollout made at micro-batch `m` of the first one.
        """
        step = self.state.global_step
        micro = self._rollout_micro[1] + 1 if self._rollout_micro[0] == step else 0
        self._rollout_micro = (step, micro)
        if step % self.args.num_iterations == 0:
            if micro == 0:
                self._rollouts = {}
            return None, micro
        rollout = self._rollouts.get(micro)
        if rollout is None:  # resumed in the middle of a reuse cycle: make a fresh rollout from here
            return None, micro
        if (
            row_index is not None
            and rollout.row_index is not None
            and not torch.equal(row_index, rollout.row_index)
        ):
            raise RuntimeError(
                f"Step {step}, micro-batch {micro}: the rows differ from those the rollout was made on; with "
                "`num_iterations > 1` the train sampler must serve each step's rows num_iterations times in a row "
                "(a custom `get_train_dataloader` must keep ClipRLTrainer's sampler)."
            )
        return rollout, micro

    def _retrieve(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        """`candidates="retrieved"`: each image's top-k pool texts under the current model, tokenised into the batch."""
        pool = self.retrieved_candidates
        step = self.state.global_step
        if pool.needs_refresh(step):
            pool.refresh(model, self.data_collator.tokenizer, step, self.args.device)
        with torch.no_grad():
            queries = modeling.image_features(model, inputs["pixel_values"])
        sets = pool.select(queries, inputs["captions"])
        texts = _UniqueTexts()
        positions = [[texts.add(t) for t in names] for names in sets]
        targets = [
            next((names.index(c) for c in captions if c in names), -1)
            for names, captions in zip(sets, inputs["captions"])
        ]
        device = inputs["pixel_values"].device
        if self.args.contrastive_coef > 0:
            inputs["caption_index"] = torch.tensor(
                [texts.add(c[0]) for c in inputs["captions"]], device=device
            )
            inputs["caption_keys"] = torch.tensor(
                [content_key(c[0]) for c in inputs["captions"]], device=device
            )
        tokens = self.data_collator.tokenize(texts.items)
        inputs.update({key: value.to(device) for key, value in tokens.items()})
        width = max(len(p) for p in positions)
        inputs["candidate_index"] = torch.tensor(
            [p + [-1] * (width - len(p)) for p in positions], device=device
        )
        inputs["target_index"] = torch.tensor(targets, device=device)
        inputs["candidates"] = inputs["candidate_texts"] = sets  # retrieved names are the texts scored

    # -------------------------------------------------------------------------------------------- rewards

    def _reward_kwargs(
        self, entries: list[tuple[int, int]], inputs: dict[str, Any], log_probs: torch.Tensor
    ) -> tuple[list[str], dict[str, Any]]:
        rows, image_column = inputs["rows"], self.args.image_column
        candidate_images = inputs.get("candidate_images")  # gathered from every rank with `gather_candidates`
        if self.args.direction == "text_to_image" and candidate_images is None:
            candidate_images = [rows[r][image_column] for r in inputs["distinct_image_rows"].tolist()]
        return reward_kwargs(
            entries,
            rows,
            inputs["candidates"],
            inputs["candidate_texts"],
            inputs["ground_truth"],
            log_probs.detach().exp().tolist(),  # one transfer, not one per entry
            image_column=image_column,
            direction=self.args.direction,
            candidate_rows=inputs.get("candidate_rows"),
            candidate_images=candidate_images,
            trainer_state=self.state,
        )

    def _score(
        self, entries: list[tuple[int, int]], inputs: dict[str, Any], log_probs: torch.Tensor
    ) -> RewardScores:
        """Every reward function's output per entry and their weighted sum (NaN where all of them said `None`)."""
        completions, kwargs = self._reward_kwargs(entries, inputs, log_probs)
        scores = self.rewards(completions, **kwargs)
        self._record(**scores.metrics())
        return scores
