"""Configuration of [`ClipDistillationTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from clip_trl.losses.distillation import TARGETS, normalized_weights
from clip_trl.trainer.base_config import ClipBaseConfig
from clip_trl.trainer.rl_config import resolve_candidate_set

DISTILLATION_DIRECTIONS = ("image_to_text", "text_to_image", "both")

_HINTON_2015 = """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}"""


@dataclass
class ClipDistillationConfig(ClipBaseConfig):
    r"""
    Configuration for [`ClipDistillationTrainer`]: a student dual encoder matches one or more frozen teachers'
    softmax over a candidate set (knowledge distillation), or their top candidate (pseudo-labels).

    For a query `x` with candidates `C(x)`, the loss is `T² · KL(p ‖ softmax(s(x, ·) / T))` with
    `p = Σ_j w_j softmax(t_j(x, ·) / T)` the teachers' mixture (`target="soft"`), or the cross-entropy toward
    `argmax p` (`target="hard"`), plus `contrastive_coef` × the contrastive loss on the rows that have a
    caption. Rows without a caption (`None`) get the distillation loss only. See
    [`clip_trl.losses.distillation`] for the formulas.

    Parameters:
        teacher_model_name_or_path (`list[str]` or `None`, defaults to `None`):
            The teacher(s): Hub ids or folders, loaded with `AutoModel.from_pretrained`. Used when the trainer is
            given no `teacher_model=` (the scripts and `clip-trl distill` set it this way).
        teacher_weights (`list[float]` or `None`, defaults to `None`):
            One weight per teacher; the targets are the mixture of the teachers' softmaxes with the weights
            divided by their sum. `None` weighs them equally.
        teacher_model_init_kwargs (`dict` or `None`, defaults to `None`):
            Keyword arguments for `AutoModel.from_pretrained` when a teacher is loaded from a string.
        temperature (`float`, defaults to `1.0`):
            `T`: both softmaxes divide the logits by it (higher: softer targets that carry more of the teacher's
            ranking of the wrong candidates). The KL is multiplied by `T²`, the usual convention, so the
            gradient's size does not depend on `T`. Ignored by `target="hard"`.
        target (`str`, defaults to `"soft"`):
            `"soft"`: match the teachers' distribution (KL). `"hard"`: pseudo-labels, the cross-entropy toward
            the teachers' top candidate.
        candidates (`str` or `None`, defaults to `None`):
            `"in_batch"` (the batch's captions: every row needs one), `"column"` (a list of strings per row in
            `candidate_column`), `"labels"` (`candidate_labels` through `label_template`; the teachers' text
            embeddings of the prompts are computed once) or `"retrieved"` (each image's `num_candidates` nearest
            texts of `candidate_pool` under the student, refreshed every `candidate_refresh_steps`), as in
            [`ClipRLConfig`]. `None` picks `"column"` when `candidate_column` is set, `"labels"` when
            `candidate_labels` is, else `"in_batch"`.
        candidate_column (`str` or `None`, defaults to `None`):
            Column holding each row's candidate captions.
        direction (`str`, defaults to `"image_to_text"`):
            `"image_to_text"`: each image's softmax over its candidate texts. `"text_to_image"`: each candidate
            text's softmax over the batch's images (in-batch and label sets, whose texts are candidates of
            every image). `"both"`: the mean of the two.
        gather_candidates (`bool`, defaults to `False`):
            Under several processes, candidates come from the global batch: in-batch captions (and, for
            `text_to_image`, the images) are gathered from every rank with gradient, so a 2-process step equals
            a 1-process step on the global batch. Label and column sets are the same however many processes
            run; `text_to_image` on labels always gathers the images.
        contrastive_coef (`float`, defaults to `0.0`):
            Weight of the contrastive (InfoNCE) loss over the rows that have a caption.
        num_candidates (`int`, defaults to `16`):
            `candidates="retrieved"`: the size of each image's retrieved candidate set, as in [`ClipRLConfig`].
        candidate_pool (`list[str]`, `str` or `None`, defaults to `None`):
            `candidates="retrieved"`: the texts to retrieve from (a list, a column name, or `None` for the
            captions); a pool from a column skips its missing captions.
        candidate_refresh_steps (`int`, defaults to `50`):
            `candidates="retrieved"`: re-embed the pool every this many steps.
        include_ground_truth (`bool`, defaults to `True`):
            `candidates="retrieved"`: keep the row's caption in its candidate set.

    Example:

    ```python
    >>> from clip_trl import ClipDistillationConfig
    >>> args = ClipDistillationConfig(output_dir="clip-distill", candidate_labels=["cat", "dog"], temperature=2.0)
    >>> args.candidates, args.target
    ('labels', 'soft')

    ```
    """

    teacher_model_name_or_path: list[str] | None = field(
        default=None, metadata={"help": "Teacher model id(s) or folder(s) (one or several)."}
    )
    teacher_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per teacher (normalised to sum 1; default: equal)."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for AutoModel.from_pretrained of the teachers."}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature T of teacher and student; the KL is scaled by T^2."},
    )
    target: str = field(
        default="soft",
        metadata={
            "help": "soft: KL to the teachers' softmax; hard: pseudo-labels.",
            "choices": list(TARGETS),
        },
    )
    candidates: str | None = field(
        default=None,
        metadata={"help": "Candidate set: in_batch, column, labels or retrieved (default: inferred)."},
    )
    candidate_column: str | None = field(
        default=None, metadata={"help": "Column holding a list of candidate captions per row."}
    )
    direction: str = field(
        default="image_to_text",
        metadata={"help": "Which softmax is distilled.", "choices": list(DISTILLATION_DIRECTIONS)},
    )
    gather_candidates: bool = field(
        default=False,
        metadata={
            "help": "In-batch candidates span the global batch (all processes), gathered with gradient."
        },
    )
    contrastive_coef: float = field(
        default=0.0, metadata={"help": "Weight of the contrastive loss over the rows that have a caption."}
    )
    num_candidates: int = field(
        default=16, metadata={"help": "candidates='retrieved': size of each image's retrieved candidate set."}
    )
    candidate_pool: list[str] | None = field(
        default=None,
        metadata={
            "help": "candidates='retrieved': a training column name, a list of texts, or None (captions)."
        },
    )
    candidate_refresh_steps: int = field(
        default=50, metadata={"help": "candidates='retrieved': re-embed the pool every this many steps."}
    )
    include_ground_truth: bool = field(
        default=True,
        metadata={"help": "candidates='retrieved': keep the row's caption in its candidate set."},
    )

    _card_fields: ClassVar[tuple[str, ...]] = (
        "teacher_model_name_or_path",
        "teacher_weights",
        "target",
        "temperature",
        "candidates",
        "direction",
        "candidate_column",
        "candidate_labels",
        "label_template",
        "num_candidates",
        "contrastive_coef",
    )

    def _card_shows(self, name: str, value: Any) -> bool:
        if name == "contrastive_coef" and value == 0:
            return False
        if name == "temperature" and self.target == "hard":
            return False
        if name in ("candidate_labels", "label_template") and self.candidates != "labels":
            return False
        if name == "candidate_column" and self.candidates != "column":
            return False
        if name == "num_candidates" and self.candidates != "retrieved":
            return False
        return super()._card_shows(name, value)

    def model_card_description(self, adapter: bool = False) -> str:
        candidates = {
            "in_batch": "the batch's captions",
            "column": "the row's candidate captions",
            "labels": "the label set's prompts",
            "retrieved": f"the student's own top-{self.num_candidates} retrieved captions",
        }.get(self.candidates, "a candidate set")
        direction = {
            "image_to_text": "each image's softmax over",
            "text_to_image": "each caption's softmax over the batch's images, with captions from",
            "both": "both softmaxes (image to text and text to image) over",
        }[self.direction]
        what = (
            f"the teachers' softmax at temperature `T = {self.temperature}` (loss `T² · KL(p_teacher ‖ p_student)`)"
            if self.target == "soft"
            else "the teachers' top candidate as a hard pseudo-label (cross-entropy)"
        )
        trained = "LoRA adapters of the student" if adapter else "the student"
        # The trainer records the teachers it was given (instances included) in `_card_teachers`.
        teachers = getattr(self, "_card_teachers", None) or [
            (name, None) for name in self.teacher_model_name_or_path or []
        ]
        named = ", ".join(
            f"`{name}`" + (f" (weight {weight:g})" if weight is not None and len(teachers) > 1 else "")
            for name, weight in teachers
        )
        teacher_text = f"Teacher{'s' if len(teachers) > 1 else ''}: {named}, frozen. " if teachers else ""
        return (
            f"Knowledge distillation: {trained} learns to match {what}, for {direction} {candidates}. "
            f"{teacher_text}Rows without a caption are trained by the distillation loss alone."
        )

    def model_card_citations(self) -> list[str]:
        return [_HINTON_2015]

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.teacher_model_name_or_path, str):
            self.teacher_model_name_or_path = [self.teacher_model_name_or_path]
        if isinstance(self.teacher_model_init_kwargs, str):  # from the command line: a JSON string
            import json

            self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
        resolve_candidate_set(
            self,
            f", got {self.candidate_labels!r}: a softmax over fewer than 2 candidates carries no information.",
        )
        if self.target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}, got {self.target!r}.")
        if self.direction not in DISTILLATION_DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DISTILLATION_DIRECTIONS}, got {self.direction!r}.")
        if self.direction != "image_to_text" and self.candidates not in ("in_batch", "labels"):
            raise ValueError(
                f"`direction={self.direction!r}` distils each text's softmax over the batch's images, which needs "
                f"texts that are candidates of every image; `candidates={self.candidates!r}` gives each row its "
                "own set. Use `candidates='in_batch'` or `'labels'`, or `direction='image_to_text'`."
            )
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {self.temperature}.")
        if self.contrastive_coef < 0:
            raise ValueError(f"`contrastive_coef` must be non-negative, got {self.contrastive_coef}.")
        if self.teacher_weights is not None and self.teacher_model_name_or_path:
            normalized_weights(self.teacher_weights, len(self.teacher_model_name_or_path))  # raises if wrong
        if self.gather_candidates and self.candidates not in ("in_batch", "labels"):
            raise ValueError(
                f"`gather_candidates=True` widens in-batch candidate sets to the global batch; it has no meaning "
                f"for `candidates={self.candidates!r}`. Set `candidates='in_batch'` or drop `gather_candidates`."
            )
        if self.candidates == "retrieved" and self.num_candidates < 2:
            raise ValueError(
                f"`num_candidates` must be at least 2 for retrieved sets, got {self.num_candidates}."
            )
        if self.candidate_refresh_steps < 1:
            raise ValueError(
                f"`candidate_refresh_steps` must be positive, got {self.candidate_refresh_steps}."
            )
        if self.candidate_pool is not None and self.candidates != "retrieved":
            raise ValueError(
                f"`candidate_pool` is the pool of `candidates='retrieved'`; it has no meaning for "
                f"`candidates={self.candidates!r}`."
            )
        if self.candidates == "in_batch" and self.per_device_train_batch_size < 2:
            raise ValueError(
                "In-batch candidates need `per_device_train_batch_size` of at least 2 (the batch is the candidate "
                "set); raise it or use `candidate_column` / `candidate_labels`."
            )
