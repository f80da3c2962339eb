"""The trainers' model cards: every save writes `README.md` next to the weights (checkpoints included), and
`push_to_hub` — the Trainer's own: it saves, calls `create_model_card`, then uploads `output_dir` — publishes
it with the training-curves picture. The card's content comes from [`clip_trl.hub.model_card.build_model_card`].
"""

from __future__ import annotations

import os

from transformers.utils import logging

from clip_trl.hub.loading import warn_if_base_is_local
from clip_trl.reporting.curves import TRAINING_CURVES_FILENAME

logger = logging.get_logger(__name__)


class ModelCardMixin:
    """`create_model_card`, and the save overrides that keep a card beside every saved model. Mixed into
    [`ClipBaseTrainer`] ahead of `transformers.Trainer`."""

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        language: str | list[str] | None = None,
        license: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        r"""
        Write `output_dir/README.md`: the model card of this run (main process only).

        The card has front matter for the Hub (`base_model`, `datasets`, `library_name` — `transformers`, or
        `peft` for an adapter —, `pipeline_tag: zero-shot-image-classification`, tags with `clip_trl` and the
        method, and a `model-index` with the final `eval_*` metrics of `state.log_history`), then what was
        trained and how, a quick-start snippet, the training curves (redrawn if evaluations were logged
        since training ended), framework versions and citations. See [`clip_trl.hub.model_card.build_model_card`].

        The signature accepts both TRL's arguments (`model_name`, `dataset_name`, `tags`) and those of
        [`~transformers.Trainer.create_model_card`], so `push_to_hub(dataset_name=..., license=...)` works.

        Args:
            model_name (`str`, *optional*): the card's title; defaults to the output folder's name.
            dataset_name (`str` or `list[str]`, *optional*): Hub dataset id(s) trained on.
            tags (`str` or `list[str]`, *optional*): tags added to `clip_trl`, the method and the model type.
            language (`str` or `list[str]`, *optional*): front-matter `language`.
            license (`str`, *optional*): front-matter `license`.
            finetuned_from (`str`, *optional*): the base model's Hub id, when the model itself does not know it
                (e.g. it was loaded from a local folder).
            tasks, dataset_tags, dataset_args (*optional*): accepted for compatibility; the task is always
                zero-shot image classification, and `dataset_tags` / `dataset` add to `dataset_name`.

        Example:

        ```python
        >>> import os, tempfile
        >>> from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
        >>> from clip_trl.offline import build_clip, load_emoji_dataset
        >>> model, processor = build_clip("tiny")
        >>> args = ClipContrastiveConfig(output_dir=tempfile.mkdtemp(), report_to="none")
        >>> trainer = ClipContrastiveTrainer(model=model, args=args, processing_class=processor,
        ...                                  train_dataset=load_emoji_dataset(max_examples=16)["train"])
        >>> trainer.create_model_card(dataset_name="my-org/emoji", tags="emoji")
        >>> os.path.isfile(os.path.join(args.output_dir, "README.md"))
        True

        ```
        """
        if not self.is_world_process_zero():
            return
        names: list[str] = []
        for value in (dataset_name, dataset_tags, dataset):
            for name in [value] if isinstance(value, str) else (value or []):
                if name not in names:
                    names.append(name)
        # Remembered, so that the cards of later saves (checkpoints, `save_model()`) keep what was said here.
        given = {
            "model_name": model_name,
            "dataset_name": names or None,
            "tags": tags,
            "language": language,
            "license": license,
            "finetuned_from": finetuned_from,
        }
        self._model_card_kwargs = {
            **getattr(self, "_model_card_kwargs", {}),
            **{key: value for key, value in given.items() if value is not None},
        }
        self._refresh_training_curves()
        self._write_model_card(self.args.output_dir)

    def _write_model_card(self, folder: str, strict: bool = True) -> None:
        from clip_trl.hub.model_card import build_model_card

        try:
            os.makedirs(folder, exist_ok=True)
            card = build_model_card(self, folder=folder, **getattr(self, "_model_card_kwargs", {}))
            card.save(os.path.join(folder, "README.md"))
        except Exception as error:
            if strict:
                raise
            # On the save path the weights are already written: a card problem must not end a long run.
            logger.warning(f"Could not write the model card in {folder}: {type(error).__name__}: {error}")

    def _refresh_training_curves(self) -> None:
        """Redraw `output_dir/training_curves.png` when the log grew since it was drawn (e.g. by a final
        `evaluate()` after training), so the card's picture shows the last evaluation too."""
        callback = getattr(self, "_curves_callback", None)
        picture = os.path.join(self.args.output_dir, TRAINING_CURVES_FILENAME)
        if callback is None or callback.plotted_entries is None:
            return  # not trained in this session: keep whatever picture is there
        if callback.plotted_entries != len(self.state.log_history) or not os.path.isfile(picture):
            callback.plot(self.args, self.state)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (the adapter only, for a peft model), its processor and a model card (`README.md`).

        Checkpoints get a card too, so any `checkpoint-*` folder is a self-describing, loadable model.
        """
        super().save_model(output_dir, _internal_call=True)  # the push, if any, comes after the card
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            if os.path.abspath(folder) == os.path.abspath(self.args.output_dir):
                self._refresh_training_curves()
            self._write_model_card(folder, strict=False)
            warn_if_base_is_local(self.accelerator.unwrap_model(self.model))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from clip_trl.hub.loading import forget_loading_options
        from clip_trl.models import lora, modeling

        # No `local_files_only` in the saved tokenizer_config.json; no peft warning about the base's config.
        forget_loading_options(self.processing_class)
        with lora.quiet_adapter_save(), modeling.quiet_weight_loading():
            super()._save(output_dir, state_dict=state_dict)
        # An adapter folder does not hold the base model's parameters: save those clip_trl added (`logit_bias`).
        lora.save_added_parameters(self.model, output_dir if output_dir is not None else self.args.output_dir)
