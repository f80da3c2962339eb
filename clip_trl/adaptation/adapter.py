r"""[`ClipTestTimeAdapter`]: adapt a dual encoder on unlabelled test inputs with rewards, then predict."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_trl.adaptation.config import ClipTestTimeConfig
from clip_trl.adaptation.objectives import distillation_objective, entropy_objective, reward_objective
from clip_trl.adaptation.report import TestTimeAdaptationError, TestTimeResult, predictions_file, write_report
from clip_trl.adaptation.stream import _input_seed, _world, gather_result, select_parameters, stream_items
from clip_trl.adaptation.stream_rewards import StreamRewards, TeacherTable
from clip_trl.adaptation.views import augmented_views, confident_views
from clip_trl.data.image_processing import FastImageTransform
from clip_trl.data.rows import BadRowError, load_image, split_processor
from clip_trl.losses.policy import policy_log_probs
from clip_trl.models import encoding, modeling

__all__ = ["ClipTestTimeAdapter", "select_parameters"]


class ClipTestTimeAdapter:
    r"""
    Test-time adaptation of a CLIP-like model with reward functions (RLCF, GRPO-TTA), and its baselines (TPT,
    test-time distillation, no adaptation), over a stream of unlabelled inputs and a candidate set.

    For each batch of `args.batch_size` inputs: `n_views` views of each input are made and the most confident
    `selection_fraction` of them kept (TPT's selection, made once per batch with the weights the batch starts
    from); `steps` optimizer steps of the objective are taken on the parameters `adapt_parameters` names; the
    input itself is then predicted, the argmax over every candidate. In `"episodic"` mode the adapted
    parameters and the optimizer state are then put back — only what adapts is snapshotted, once, never the whole
    model — so a prediction does not depend on the inputs before it. In `"online"` mode the weights keep adapting
    and the predictions use their moving average.

    The candidate texts are embedded once per stream (by the student when its text tower does not adapt, and by
    each teacher), each input's image once per batch by each teacher; only the adapted tower runs per step.
    Under several processes (`torchrun`) the batches are dealt out in turn to the processes and the predictions
    gathered: in episodic mode the predictions equal a one-process run's (views and samples of input `i` come
    from a generator seeded with `(seed, i)`).

    Args:
        model (`nn.Module`, `str` or `os.PathLike`):
            The student, or where to load it from ([`clip_trl.hub.load_model`]: a full model or an adapter).
        args ([`ClipTestTimeConfig`], *optional*):
            The settings; the defaults when omitted.
        processing_class (`ProcessorMixin`, *optional*):
            The student's processor (image processor and tokenizer); loaded with `model` when that is a path.
        reward_funcs (callable, `str` or a list of them, *optional*):
            The rewards of `objective="reward"`: a teacher (`ClipScoreReward(teacher, teacher_processor)`, RLCF's,
            or `TeacherProbabilityReward`), several, or any reward callable with the library's signature (it
            gets `images` — the input itself for each of its views — `candidates`, `candidate_texts`, `chosen`,
            `chosen_text`, `probs`, `input_index`). The teachers are also those of `objective="distillation"`.
        reward_weights (`list[float]`, *optional*):
            One weight per reward function.
        peft_config (`peft.PeftConfig`, *optional*):
            Wrap the model with LoRA adapters first (with `adapt_parameters="lora"`).

    Raises:
        ValueError: no processor, no reward for `objective="reward"`, no teacher for `"distillation"`, or nothing
            to adapt for `adapt_parameters`.

    Example:

    ```python
    >>> from PIL import Image
    >>> from clip_trl.adaptation import ClipTestTimeAdapter, ClipTestTimeConfig
    >>> from clip_trl.offline import build_clip
    >>> from clip_trl.rewards import ClipScoreReward
    >>> student, processor = build_clip("tiny", seed=0)
    >>> teacher, teacher_processor = build_clip("tiny", seed=1)
    >>> adapter = ClipTestTimeAdapter(
    ...     student,
    ...     ClipTestTimeConfig(candidate_labels=["red", "blue", "green"], steps=2, learning_rate=1e-3),
    ...     processing_class=processor,
    ...     reward_funcs=ClipScoreReward(teacher, teacher_processor),
    ... )
    >>> result = adapter.adapt([Image.new("RGB", (32, 32), c) for c in ("red", "blue")])
    >>> len(result.predictions), result.predictions[0]["index"], result.stats["steps_per_input"]
    (2, 0, 2.0)

    ```
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike[str],
        args: ClipTestTimeConfig | None = None,
        processing_class: Any = None,
        reward_funcs: Any = None,
        reward_weights: Sequence[float] | None = None,
        peft_config: Any = None,
    ) -> None:
        self.args = args = args if args is not None else ClipTestTimeConfig()
        if isinstance(model, (str, os.PathLike)):
            from clip_trl.hub import load_model

            model, loaded = load_model(os.fspath(model))
            processing_class = processing_class if processing_class is not None else loaded
        if processing_class is None:
            raise ValueError(
                "ClipTestTimeAdapter needs the model's `processing_class` (its CLIPProcessor), or a model path to "
                "load both from."
            )
        modeling.check_clip_like(model)
        if peft_config is not None:
            from clip_trl.models.lora import prepare_peft_model

            model = prepare_peft_model(model, peft_config)
        self.model = model
        self.processing_class = processing_class
        self.image_processor, self.tokenizer = split_processor(processing_class)
        self.transform = FastImageTransform(self.image_processor)
        self.rewards = StreamRewards(reward_funcs, reward_weights) if reward_funcs is not None else None
        if args.objective == "reward" and self.rewards is None:
            raise ValueError(
                "objective='reward' needs `reward_funcs`: a teacher such as `ClipScoreReward(teacher, "
                "teacher_processor)`, or any reward callable; use objective='entropy' for TPT without one."
            )
        if args.objective == "distillation" and (self.rewards is None or not self.rewards.teachers):
            raise ValueError(
                "objective='distillation' needs a teacher among `reward_funcs` (a ClipScoreReward or "
                "TeacherProbabilityReward, which holds the teacher model and its own processor)."
            )
        self.parameters = select_parameters(model, args.adapt_parameters)
        if not self.parameters and args.objective != "none":
            hint = " (pass a PeftModel or a `peft_config`)" if args.adapt_parameters == "lora" else ""
            raise ValueError(
                f"adapt_parameters={args.adapt_parameters!r} selects no parameter of {type(model).__name__}{hint}."
            )
        text_ids = {id(p) for m in modeling.tower_modules(model, "text") for p in m.parameters()}
        self._text_adapts = any(id(p) in text_ids for p in self.parameters.values())
        params = list(self.parameters.values())
        if args.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        self._start = self.trainable_state()
        self._ema = self.trainable_state() if args.mode == "online" else None
        self._batches_since_reset = 0

    # ------------------------------------------------------------------------------------------ weights

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the parameters that adapt (the current, fast weights)."""
        return {name: p.detach().clone() for name, p in self.parameters.items()}

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """Online mode: a copy of the moving average of the adapted weights (what predicts); else `None`."""
        return None if self._ema is None else {k: v.clone() for k, v in self._ema.items()}

    @torch.no_grad()
    def _load(self, state: dict[str, torch.Tensor]) -> None:
        for name, p in self.parameters.items():
            p.copy_(state[name])

    def reset(self) -> None:
        """Put the adapted parameters, the optimizer state (and the online average) back to the start."""
        self._load(self._start)
        self.optimizer.state.clear()
        if self._ema is not None:
            self._ema = {k: v.clone() for k, v in self._start.items()}
        self._batches_since_reset = 0

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.args.ema_decay
        for name, p in self.parameters.items():
            self._ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    # ------------------------------------------------------------------------------------------ encoding

    def _pixels(self, images: list[Any]) -> dict[str, torch.Tensor]:
        device, dtype = encoding.device_and_dtype(self.model)
        inputs = encoding.image_batch(self.transform, images)
        return {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            for k, v in modeling.image_inputs(self.model, inputs).items()
        }

    def _text_embeds(self) -> torch.Tensor:
        if not self._text_adapts:
            return self._texts_cached
        device, _ = encoding.device_and_dtype(self.model)
        ids = {k: v.to(device) for k, v in self._tokens.items()}
        return F.normalize(
            modeling.text_features(self.model, ids["input_ids"], ids.get("attention_mask")), dim=-1
        )

    def _logits(self, pixels: dict[str, torch.Tensor], select: torch.Tensor | None = None) -> torch.Tensor:
        if select is not None:
            pixels = {k: v[select] for k, v in pixels.items()}
        images = F.normalize(modeling.image_features(self.model, pixels).float(), dim=-1)
        scale = modeling.logit_scale(self.model).detach().float().exp()
        return scale * images @ self._text_embeds().float().to(images.device).T

    # ------------------------------------------------------------------------------------------ one batch

    def _start_stream(self, texts: list[str]) -> None:
        self._texts = texts
        self._tokens = encoding.tokenize(self.model, self.tokenizer, texts)
        if not self._text_adapts:
            device, _ = encoding.device_and_dtype(self.model)
            self._texts_cached = encoding.embed_texts(self.model, self.tokenizer, texts).to(device)
        if self.rewards is not None:
            self.rewards.start_stream(texts)
        if self.args.objective == "distillation":  # every teacher, subclasses of the built-ins too
            self._distill_tables = [TeacherTable(t, texts) for t in self.rewards.teachers]

    def _teacher_signal(self, images: list[Any]) -> list[torch.Tensor]:
        """Once per batch: the tabled teachers' cosines (reward), or every teacher's logits (distillation)."""
        if self.args.objective == "distillation":
            self.rewards.calls += len(self._distill_tables)
            return [table.logits(table.cosines(images)) for table in self._distill_tables]
        if self.args.objective == "reward" and self.rewards.tables:
            return self.rewards.teacher_cosines(images)
        return []

    def adapt_batch(self, images: list[Any], indices: list[int], labels: list[str]) -> list[dict[str, Any]]:
        """Adapt on one batch of decoded images (positions `indices` in the stream), predict them, and do the
        mode's bookkeeping (episodic: reset; online: the moving average, and the periodic reset). Call
        [`adapt`] for a whole stream; this is the step it repeats."""
        args = self.args
        generator = torch.Generator().manual_seed(_input_seed(args.seed, indices[0]))
        views = [
            augmented_views(im, args.n_views, generator, args.min_crop_scale, args.flip) for im in images
        ]
        pixels = self._pixels([v for group in views for v in group])
        owner = torch.arange(len(images)).repeat_interleave(args.n_views)
        if args.objective != "none" and args.steps > 0:
            if args.num_selected_views < args.n_views:
                with torch.no_grad():
                    log_probs = policy_log_probs(self._logits(pixels), None, args.policy_temperature)
                keep = [
                    b * args.n_views + confident_views(log_probs[owner == b], args.selection_fraction)
                    for b in range(len(images))
                ]
                select = torch.cat(keep)
            else:
                select = torch.arange(owner.numel())
            selected_owner = owner[select]
            cosines = self._teacher_signal(images)
            for _ in range(args.steps):
                logits = self._logits(pixels, select)
                loss = self._loss(logits, selected_owner, cosines, images, indices, labels, generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        predictions = self._predict(pixels, torch.arange(len(images)) * args.n_views, indices, labels)
        if args.mode == "episodic":
            self.reset()
        else:
            self._batches_since_reset += 1
            if args.reset_every and self._batches_since_reset >= args.reset_every:
                self.reset()
        return predictions

    def _loss(self, logits, owner, cosines, images, indices, labels, generator) -> torch.Tensor:
        args = self.args
        if args.objective == "entropy":
            return entropy_objective(logits, owner, len(images), args.policy_temperature)
        if args.objective == "distillation":
            return distillation_objective(logits, cosines, owner, args.distillation_temperature)

        def score(actions, mask, probs):
            return self.rewards.score(
                actions,
                mask,
                owner,
                cosines,
                probs,
                images=images,
                indices=indices,
                labels=labels,
                texts=self._texts,
            )

        loss, _ = reward_objective(
            logits,
            top_k=args.top_k,
            temperature=args.policy_temperature,
            advantage=args.advantage,
            num_samples=args.num_samples,
            generator=generator,
            score=score,
        )
        return loss

    @torch.no_grad()
    def _predict(self, pixels, select, indices, labels) -> list[dict[str, Any]]:
        fast = None
        if self._ema is not None:
            fast = self.trainable_state()
            self._update_ema()
            self._load(self._ema)
        try:
            probs = torch.softmax(self._logits(pixels, select), dim=-1).cpu()
        finally:
            if fast is not None:
                self._load(fast)
        top = probs.argmax(dim=-1)
        return [
            {
                "index": int(i),
                "prediction": labels[int(c)],
                "candidate": int(c),
                "probability": float(probs[n, c]),
            }
            for n, (i, c) in enumerate(zip(indices, top))
        ]

    # ------------------------------------------------------------------------------------------ the stream

    def _candidates(
        self, candidates: Sequence[str] | None, labels: Sequence[str] | None
    ) -> tuple[list, list]:
        if candidates is None and self.args.candidate_labels is not None:
            names = list(self.args.candidate_labels)
            return [self.args.label_template.format(n) for n in names], names
        texts = list(candidates or [])
        if not texts:
            raise ValueError(
                "The candidate set is empty: pass `candidates=[...]` (texts, e.g. class prompts or a caption pool) "
                "to `adapt`, or set `candidate_labels` in ClipTestTimeConfig."
            )
        names = list(labels) if labels is not None else texts
        if len(names) != len(texts):
            raise ValueError(
                f"{len(names)} labels for {len(texts)} candidates; give one label per candidate."
            )
        return texts, names

    def adapt(
        self,
        inputs: Iterable[Any],
        candidates: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> TestTimeResult:
        """Adapt and predict every input of the stream.

        Args:
            inputs: images (PIL, paths, bytes, `datasets.Image` dicts, arrays), or a `datasets.Dataset` whose
                `args.image_column` holds them.
            candidates: the candidate texts (the class prompts, or a caption pool); default the config's
                `candidate_labels` through `label_template`.
            labels: the name returned for each candidate (default: the candidate text).

        Returns:
            [`TestTimeResult`]: the predictions (of every process), skipped inputs, cost and settings.

        Raises:
            ValueError: an empty candidate set.
            TestTimeAdaptationError: an input failed (a reward raised; an image did not decode with
                `on_bad_image="raise"`). It names the input and holds the predictions made before it.
        """
        args = self.args
        texts, names = self._candidates(candidates, labels)
        column = args.image_column
        items = stream_items(inputs, column)
        rank, world = _world()
        batches = [
            list(range(s, min(s + args.batch_size, len(items))))
            for s in range(0, len(items), args.batch_size)
        ]
        result = TestTimeResult(settings=args.to_dict())
        out = None
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            out = open(predictions_file(args.output_dir, rank, world), "w")  # noqa: SIM115 (closed in finally)
        flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        calls_before = self.rewards.calls if self.rewards is not None else 0
        started = time.perf_counter()
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.parameters.values():
                p.requires_grad_(True)
            with encoding.eval_mode(self.model):
                self._start_stream(texts)
                for batch in batches[rank::world]:
                    images, kept = [], []
                    for index in batch:
                        try:
                            images.append(load_image(items[index], row=index, column=column))
                            kept.append(index)
                        except BadRowError as error:
                            reason = f"input {index}: {error.summary}"
                            if args.on_bad_image == "raise":
                                raise TestTimeAdaptationError(
                                    f"Input {index} of the stream cannot be decoded ({error.summary}) Set "
                                    "on_bad_image='skip' to skip such inputs; the predictions made so far are in "
                                    "the error's `result`.",
                                    index,
                                    result,
                                ) from error
                            result.skipped.append({"index": index, "reason": reason})
                    if not images:
                        continue
                    try:
                        predictions = self.adapt_batch(images, kept, names)
                    except Exception as error:
                        where = f"input {kept[0]}" if len(kept) == 1 else f"the batch of inputs {kept}"
                        if args.mode == "episodic":
                            self.reset()
                        raise TestTimeAdaptationError(
                            f"Test-time adaptation failed on {where}: {type(error).__name__}: {error} The "
                            f"{len(result.predictions)} predictions made before it are in the error's `result`"
                            + (f" and in {out.name}." if out else "."),
                            kept[0],
                            result,
                        ) from error
                    result.predictions.extend(predictions)
                    if out is not None:
                        out.write("".join(json.dumps(p) + "\n" for p in predictions))
                        out.flush()
        finally:
            if out is not None:
                out.close()
            for name, p in self.model.named_parameters():
                p.requires_grad_(flags[name])
        seconds = time.perf_counter() - started
        calls = (self.rewards.calls if self.rewards is not None else 0) - calls_before
        done = len(result.predictions)
        result.stats = {"inputs": done, "seconds": seconds, "reward_calls": calls}
        if world > 1:
            result = gather_result(result)
        done = max(result.stats["inputs"], 1)
        result.stats.update(
            seconds_per_input=result.stats["seconds"] / done,
            reward_calls_per_input=result.stats["reward_calls"] / done,
            steps_per_input=float(args.steps if args.objective != "none" else 0),
            processes=world,
            rewards=list(self.rewards.names) if self.rewards is not None else [],
        )
        if args.output_dir and rank == 0:
            write_report(result, args.output_dir)
        return result

    def save_model(self, output_dir: str) -> str:
        """Save the online mode's final weights (their moving average) with the processor and a model card."""
        from clip_trl.adaptation.card import write_card

        if self.args.mode != "online":
            raise ValueError(
                "save_model saves the online mode's weights; episodic adaptation leaves none to save."
            )
        fast = self.trainable_state()
        self._load(self._ema)
        try:
            self.model.save_pretrained(output_dir)
        finally:
            self._load(fast)
        self.processing_class.save_pretrained(output_dir)
        write_card(self, output_dir)
        return output_dir
