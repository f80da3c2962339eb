"""Configuration of [`ClipRLTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from clip_trl.losses.policy import ADVANTAGES
from clip_trl.trainer.base_config import ClipBaseConfig

CANDIDATE_SETS = ("in_batch", "column", "labels", "retrieved")


def resolve_candidate_set(config: Any, labels_detail: str = ".") -> None:
    """Fill in and check a config's candidate-set fields (shared by the RL and distillation configs).

    `--candidate_pool name` from the command line becomes the column name; `candidates=None` becomes `"column"`
    when `candidate_column` is set, `"labels"` when `candidate_labels` is, else `"in_batch"`. `labels_detail`
    ends the message for a label set of fewer than 2 distinct labels.
    """
    if isinstance(config.candidate_pool, (list, tuple)) and len(config.candidate_pool) == 1:
        config.candidate_pool = config.candidate_pool[0]  # `--candidate_pool name`: a column
    if config.candidates is None:
        if config.candidate_column is not None:
            config.candidates = "column"
        elif config.candidate_labels:
            config.candidates = "labels"
        else:
            config.candidates = "in_batch"
    if config.candidates not in CANDIDATE_SETS:
        raise ValueError(f"`candidates` must be one of {CANDIDATE_SETS}, got {config.candidates!r}.")
    if config.candidates == "column" and not config.candidate_column:
        raise ValueError(
            "`candidates='column'` needs `candidate_column`, the column holding candidate lists."
        )
    if config.candidates == "labels" and (
        not config.candidate_labels or len(set(config.candidate_labels)) < 2
    ):
        raise ValueError(
            f"`candidates='labels'` needs `candidate_labels` with at least 2 distinct labels{labels_detail}"
        )


DIRECTIONS = ("image_to_text", "text_to_image")


@dataclass
class ClipRLConfig(ClipBaseConfig):
    r"""
    Configuration for [`ClipRLTrainer`]: policy-gradient fine-tuning of a dual encoder.

    The policy is `π(c|x) = softmax_c(s(x, c) / policy_temperature)` over a candidate set `C(x)`; each step
    samples `num_samples` actions per query (or enumerates all of them with `advantage="exact"`), scores
    them with the reward functions and minimises `-mean(A·log π(a|x)) + beta·KL(π‖π_ref) - entropy_coef·H(π)`
    (+ `contrastive_coef` × the contrastive loss).

    Parameters:
        candidates (`str` or `None`, defaults to `None`):
            `"in_batch"` (the batch's captions, or images for `text_to_image`), `"column"` (a list of strings
            per row in `candidate_column`), `"labels"` (`candidate_labels` through `label_template`) or
            `"retrieved"` (each image's `num_candidates` nearest texts of `candidate_pool` under the current
            model: on-policy hard negatives). `None` picks `"column"` when `candidate_column` is set, `"labels"`
            when `candidate_labels` is, else `"in_batch"`.
        candidate_column (`str` or `None`, defaults to `None`):
            Column holding each row's candidate captions (e.g. several captions from a captioner).
        direction (`str`, defaults to `"image_to_text"`):
            `"image_to_text"`: an image picks a caption. `"text_to_image"`: a caption picks an image (in-batch only).
        gather_candidates (`bool`, defaults to `False`):
            With `candidates="in_batch"` under several processes, make each query's candidate set the distinct
            captions (or images, for `text_to_image`) of the *global* batch instead of its own rank's: candidate
            embeddings are gathered from every rank with gradient, and rewards see the global candidate lists.
            Each rank still scores only its own queries. A 2-process step then equals a 1-process step on the
            global batch; with one process it changes nothing.
        num_samples (`int`, defaults to `8`):
            Actions sampled per query (with replacement). At least 2 for `"grpo"`/`"rloo"`.
        list_size (`int` or `None`, defaults to `None`):
            Make each action a ranked list of this many distinct candidates instead of one candidate: lists are
            drawn without replacement from the Plackett–Luce policy over π (Gumbel top-k), `num_samples` per
            query, and the reward functions score each whole list (docs/rewards.md, "List rewards": they receive
            one ranked list per entry). For rewards of a list or a set (NDCG@k, recall@k with several positives,
            diversity) that no per-candidate score expresses. Needs `advantage="grpo"` or `"rloo"` and
            `num_iterations=1`; `None`: one candidate per action.
        policy_temperature (`float`, defaults to `1.0`):
            τ: the policy divides CLIP logits by it. Higher explores more.
        advantage (`str`, defaults to `"grpo"`):
            `"grpo"`: `(r - group mean) / (group std + eps)`; `"rloo"`: leave-one-out baseline; `"exact"`: no
            sampling, every candidate is scored and the loss is the exact policy gradient of the expected reward.
        scale_rewards (`bool`, defaults to `True`):
            GRPO only: divide by the group's standard deviation.
        beta (`float`, defaults to `0.04`):
            Weight of the exact `KL(π ‖ π_ref)` over the candidates. `0.0` creates no reference model.
        entropy_coef (`float`, defaults to `0.0`):
            Weight of the entropy bonus `H(π)`.
        contrastive_coef (`float`, defaults to `0.0`):
            Weight of the supervised contrastive loss on the batch (keeps the representation anchored).
        reward_weights (`list[float]` or `None`, defaults to `None`):
            One weight per reward function; `None` weighs them all 1.
        num_candidates (`int`, defaults to `16`):
            `candidates="retrieved"`: the size of each image's candidate set (its top-k texts of the pool).
        candidate_pool (`str`, `list[str]` or `None`, defaults to `None`):
            `candidates="retrieved"`: the texts to retrieve from. `None`: the distinct captions of the training set;
            a string (on the command line: a single value): the name of a training-set column (strings or lists
            of strings) whose distinct values form the pool; a list of two or more texts: the pool itself.
        candidate_refresh_steps (`int`, defaults to `50`):
            `candidates="retrieved"`: the pool's embeddings are recomputed with the current model at every
            multiple of this many optimizer steps (and at the start), so the negatives stay hard as the model
            learns. Under several processes each process embeds a shard of the pool and the shards are
            all-gathered: the index is built once per refresh and is the same on every process.
        include_ground_truth (`bool`, defaults to `True`):
            `candidates="retrieved"`: when the row's caption is not among its retrieved candidates, it replaces the
            last (least similar) one, so the right answer can always be chosen.
        num_iterations (`int`, defaults to `1`):
            Optimizer updates per rollout, TRL GRPO's name: actions, rewards and old log-probabilities are computed
            once per batch and reused for this many updates (the rows of a batch are served this many times in a
            row, so a costly reward, e.g. a teacher model, runs once per batch). Above 1 the policy term becomes
            PPO's clipped surrogate with ratio `π/π_old`. An epoch then has `num_iterations` times as many steps.
        epsilon (`float`, defaults to `0.2`):
            Lower clipping range of the importance ratio (`1 - epsilon`), used when `num_iterations > 1`.
        epsilon_high (`float` or `None`, defaults to `None`):
            Upper clipping range (`1 + epsilon_high`); `None` uses `epsilon` (DAPO's "clip-higher" sets it larger).
        log_rollouts (`bool`, defaults to `False`):
            At every logging step, log a table of rollouts (TRL's `log_completions` for a dual encoder): per
            query, a thumbnail of the image, the top candidates under π, the candidates chosen, each reward
            function's value and the advantage. It goes to `output_dir/rollouts/` (a parquet file per step,
            thumbnails and an `index.html` page), to the `report_to` integrations that show tables (TensorBoard
            as text, Weights & Biases, Trackio), to the console when `rich` is installed (see `print_rollouts`),
            and the model card shows a few. See [`clip_trl.reporting.rollouts`].
        num_rollouts_to_log (`int`, defaults to `8`):
            Queries per logged table: the first ones of the latest rollout (over all processes, in rank order).
            With `num_iterations > 1` that is the rollout the step's batch reuses, logged once.
        print_rollouts (`str`, defaults to `"end"`):
            When the console gets the table (with `log_rollouts` and `rich` installed; the files and integrations
            get every logged step regardless): `"end"` prints the last logged step's table once, when training
            ends; `"log"` at every logging step (TRL's behaviour); `"no"` never. It fits the terminal's width.

    Stability: a policy can make itself confident by raising `logit_scale` rather than by improving its
    embeddings (entropy collapses, more so from a weak model). `logit_scale_learning_rate=0.0` (a
    [`ClipBaseConfig`] field) keeps the temperature fixed during RL; `docs/rl.md` shows its measured effect.

    Example:

    ```python
    >>> from clip_trl import ClipRLConfig
    >>> args = ClipRLConfig(output_dir="clip-rl", num_samples=8, advantage="grpo", beta=0.04)
    >>> args.policy_temperature
    1.0

    ```
    """

    candidates: str | None = field(
        default=None, metadata={"help": "Candidate set: in_batch, column or labels (default: inferred)."}
    )
    candidate_column: str | None = field(
        default=None, metadata={"help": "Column holding a list of candidate captions per row."}
    )
    direction: str = field(
        default="image_to_text", metadata={"help": "Which side chooses.", "choices": list(DIRECTIONS)}
    )
    gather_candidates: bool = field(
        default=False,
        metadata={
            "help": "In-batch candidates span the global batch (all processes), gathered with gradient."
        },
    )
    num_samples: int = field(default=8, metadata={"help": "Actions sampled per query (with replacement)."})
    list_size: int | None = field(
        default=None,
        metadata={"help": "Each action is a ranked list of this many candidates (Plackett-Luce); None: one."},
    )
    policy_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the policy."})
    advantage: str = field(
        default="grpo", metadata={"help": "Advantage estimator.", "choices": list(ADVANTAGES)}
    )
    scale_rewards: bool = field(default=True, metadata={"help": "GRPO: divide advantages by the group std."})
    beta: float = field(default=0.04, metadata={"help": "KL(π‖π_ref) weight; 0 loads no reference model."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus weight."})
    contrastive_coef: float = field(
        default=0.0, metadata={"help": "Weight of the contrastive loss mixed in."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default: all 1)."}
    )

    num_candidates: int = field(
        default=16, metadata={"help": "candidates='retrieved': size of each image's retrieved candidate set."}
    )
    # Typed for the argument parser as a list; a string (or one value on the command line) names a column.
    candidate_pool: list[str] | None = field(
        default=None,
        metadata={
            "help": "candidates='retrieved': texts to retrieve from: a training column name, a list of texts, or "
            "None for the training captions' distinct values."
        },
    )
    candidate_refresh_steps: int = field(
        default=50,
        metadata={"help": "candidates='retrieved': re-embed the pool every this many optimizer steps."},
    )
    include_ground_truth: bool = field(
        default=True,
        metadata={
            "help": "candidates='retrieved': put the row's caption in its candidate set when it is missing."
        },
    )
    num_iterations: int = field(
        default=1,
        metadata={"help": "Optimizer updates per rollout (reused with a clipped importance ratio)."},
    )
    epsilon: float = field(
        default=0.2, metadata={"help": "Lower clip range of the importance ratio (1 - epsilon)."}
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "Upper clip range of the importance ratio (1 + epsilon_high); default: epsilon."},
    )
    log_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Log a table of rollouts (image, top candidates, choices, rewards, advantage) at each "
            "logging step: to output_dir/rollouts (parquet + index.html), report_to integrations and the console."
        },
    )
    num_rollouts_to_log: int = field(default=8, metadata={"help": "Queries per logged rollout table."})
    print_rollouts: str = field(
        default="end",
        metadata={
            "help": "With log_rollouts and rich installed, print the rollout table to the console: 'end' (the last "
            "logged step's, once, when training ends), 'log' (at every logging step) or 'no'.",
            "choices": ["end", "log", "no"],
        },
    )

    _card_fields: ClassVar[tuple[str, ...]] = (
        "candidates",
        "direction",
        "candidate_column",
        "candidate_labels",
        "label_template",
        "advantage",
        "num_samples",
        "list_size",
        "scale_rewards",
        "beta",
        "policy_temperature",
        "entropy_coef",
        "contrastive_coef",
    )

    def _card_shows(self, name: str, value: Any) -> bool:
        if name in ("entropy_coef", "contrastive_coef") and value == 0:
            return False
        if (name == "num_samples" and self.advantage == "exact") or (
            name == "scale_rewards" and self.advantage != "grpo"
        ):
            return False
        if name in ("candidate_labels", "label_template") and self.candidates != "labels":
            return False
        if name == "candidate_column" and self.candidates != "column":
            return False
        return super()._card_shows(name, value)

    def model_card_description(self, adapter: bool = False) -> str:
        candidates = {
            "in_batch": "the batch's",
            "column": "the row's",
            "labels": "the label set's",
            "retrieved": f"the model's own top-{self.num_candidates} retrieved",
        }.get(self.candidates, "the")
        kind = "images" if self.direction == "text_to_image" else "captions"
        sampling = (
            "scores every candidate (no sampling)"
            if self.advantage == "exact"
            else f"samples {self.num_samples} choices per query"
        )
        advantage = {
            "grpo": "GRPO-style group-normalised advantages",
            "rloo": "a leave-one-out (RLOO) baseline",
            "exact": "the exact expected-reward gradient",
        }.get(self.advantage, f"`{self.advantage}` advantages")
        reference = (
            ("starting model (the same weights with the adapters disabled)" if adapter else "starting model")
            if self.beta > 0
            else "starting model, here switched off (`β = 0`)"
        )
        query = "caption" if self.direction == "text_to_image" else "image"
        return (
            "Reinforcement-learning fine-tuning: the model is a policy `π(c | x) = softmax_c(s(x, c) / τ)` over a "
            f"candidate set of {candidates} {kind} for each {query}. Each step {sampling}, scores the choices with "
            f"the reward functions below and follows the policy gradient with {advantage}, plus "
            f"`β · KL(π ‖ π_ref)` (exact over the candidates) to the {reference}."
        )

    def model_card_citations(self) -> list[str]:
        # The exact gradient is REINFORCE's estimator without sampling.
        return [{"grpo": "grpo", "rloo": "rloo"}.get(self.advantage, "reinforce")]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        resolve_candidate_set(self)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {self.direction!r}.")
        if self.direction == "text_to_image" and self.candidates != "in_batch":
            raise ValueError(
                "`direction='text_to_image'` chooses among the batch's images; set `candidates='in_batch'`."
            )
        if self.gather_candidates and self.candidates != "in_batch":
            raise ValueError(
                f"`gather_candidates=True` widens in-batch candidate sets to the global batch; it has no meaning "
                f"for `candidates={self.candidates!r}` (its sets do not come from the batch). Set "
                "`candidates='in_batch'` or drop `gather_candidates`."
            )
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"`advantage` must be one of {ADVANTAGES}, got {self.advantage!r}.")
        if self.advantage != "exact" and self.num_samples < 2:
            raise ValueError(
                f"`num_samples={self.num_samples}` gives advantage='{self.advantage}' no group to compare against; "
                "set `num_samples` to 2 or more, or use `advantage='exact'`."
            )
        if self.list_size is not None:
            self._check_list_size()
        if self.policy_temperature <= 0:
            raise ValueError(f"`policy_temperature` must be positive, got {self.policy_temperature}.")
        if self.beta < 0 or self.entropy_coef < 0 or self.contrastive_coef < 0:
            raise ValueError("`beta`, `entropy_coef` and `contrastive_coef` must be non-negative.")
        if self.candidates == "retrieved" and self.num_candidates < 2:
            raise ValueError(
                f"`num_candidates` must be at least 2 for retrieved candidate sets, got {self.num_candidates}."
            )
        if self.candidate_refresh_steps < 1:
            raise ValueError(
                f"`candidate_refresh_steps` must be a positive integer, got {self.candidate_refresh_steps}."
            )
        if self.candidate_pool is not None and self.candidates != "retrieved":
            raise ValueError(
                f"`candidate_pool` is the pool of `candidates='retrieved'`; it has no meaning for "
                f"`candidates={self.candidates!r}`. Set `candidates='retrieved'` or drop `candidate_pool`."
            )
        if self.print_rollouts not in ("end", "log", "no"):
            raise ValueError(f"`print_rollouts` must be 'end', 'log' or 'no', got {self.print_rollouts!r}.")
        if self.num_rollouts_to_log < 1:
            raise ValueError(
                f"`num_rollouts_to_log` must be a positive integer, got {self.num_rollouts_to_log}."
            )
        if self.num_iterations < 1:
            raise ValueError(f"`num_iterations` must be a positive integer, got {self.num_iterations}.")
        if self.epsilon < 0 or self.epsilon_high < 0:
            raise ValueError(
                f"`epsilon` and `epsilon_high` must be non-negative, got {self.epsilon}, {self.epsilon_high}."
            )
        if self.candidates == "in_batch" and self.per_device_train_batch_size < 2:
            raise ValueError(
                "In-batch candidates need `per_device_train_batch_size` of at least 2 (the batch is the "
                "candidate set); raise it or use `candidate_column` / `candidate_labels`."
            )

    def _check_list_size(self) -> None:
        """`list_size`: ranked lists need sampled advantages, one update per rollout and enough candidates."""
        if isinstance(self.list_size, bool) or not isinstance(self.list_size, int) or self.list_size < 1:
            raise ValueError(f"`list_size` must be a positive integer or None, got {self.list_size!r}.")
        if self.advantage == "exact":
            raise ValueError(
                f"`list_size={self.list_size}` samples ranked lists, which `advantage='exact'` cannot enumerate; "
                "use `advantage='grpo'` or `'rloo'`."
            )
        if self.num_iterations > 1:
            raise ValueError(
                f"`list_size` does not support `num_iterations={self.num_iterations}` (no clipped surrogate for "
                "lists); set `num_iterations=1`."
            )
        if self.direction != "image_to_text":
            raise ValueError("`list_size` ranks captions for an image; set `direction='image_to_text'`.")
        available = {
            "labels": len(set(self.candidate_labels or ())),
            "retrieved": self.num_candidates,
            "in_batch": self.per_device_train_batch_size,
        }.get(self.candidates)
        if available is not None and self.list_size > available:
            raise ValueError(
                f"`list_size={self.list_size}` exceeds the {available} candidates of `candidates="
                f"{self.candidates!r}`; lower `list_size` or enlarge the candidate set."
            )
