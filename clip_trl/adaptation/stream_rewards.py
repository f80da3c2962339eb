"""Rewards over a test stream: the teachers' embeddings made once, the other reward callables called per step.

A teacher reward ([`~clip_trl.rewards.ClipScoreReward`], [`~clip_trl.rewards.TeacherProbabilityReward`]) is a
frozen model: what it says about an (image, candidate) pair never changes during a stream. So its candidate texts
are embedded once per stream (with the teacher's own tokenizer) and each input's image once per episode (with the
teacher's own image processor); every step then reads its rewards from that table, whatever the candidates the
policy samples. The scores are those of the reward's `__call__` (CLIPScore `w · max(cos, 0)`, or the teacher's
softmax over the policy's candidate set). Any other reward callable is called once per step with the documented
keyword arguments ([`clip_trl.rewards.scoring.reward_kwargs`]) and checked by [`~clip_trl.rewards.RewardSet`].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from clip_trl.models.modeling import logit_scale
from clip_trl.rewards.registry import reward_name
from clip_trl.rewards.resolving import get_reward_function
from clip_trl.rewards.scoring import RewardSet, reward_kwargs
from clip_trl.rewards.teachers import ClipScoreReward, TeacherProbabilityReward

__all__ = ["StreamRewards", "TeacherTable", "is_teacher"]


def is_teacher(func: Any) -> bool:
    """A built-in teacher reward whose scores can be tabled (a subclass may score differently: not tabled)."""
    return type(func) in (ClipScoreReward, TeacherProbabilityReward)


class TeacherTable:
    """A teacher's normalised embeddings of the stream's candidate texts, made once."""

    def __init__(self, teacher: ClipScoreReward, texts: Sequence[str]) -> None:
        self.teacher = teacher
        with torch.no_grad():
            self.text_embeds = teacher._embed_texts(list(texts)).float().cpu()
            self.scale = float(logit_scale(teacher.model).detach().float().exp())

    def cosines(self, images: Sequence[Any]) -> torch.Tensor:
        """`[B, C]` cosines of each image with every candidate (one teacher forward for the images)."""
        with torch.no_grad():
            return self.teacher._embed_images(list(images)).float().cpu() @ self.text_embeds.T

    def logits(self, cosines: torch.Tensor) -> torch.Tensor:
        """The teacher's logits `exp(logit_scale) · cos`."""
        return self.scale * cosines

    def rewards(self, cosines: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`[N, C]` the reward of choosing each candidate (NaN outside `mask`, the policy's candidate set), from
        `[N, C]` cosines of each query's image."""
        if isinstance(self.teacher, TeacherProbabilityReward):
            log_p = torch.log_softmax(self.logits(cosines).masked_fill(~mask, float("-inf")), dim=-1)
            values = log_p if self.teacher.log_probability else log_p.exp()
        else:
            values = self.teacher.weight * cosines.clamp(min=0.0)
        return values.masked_fill(~mask, math.nan)


class StreamRewards:
    """The reward functions of a stream, weighted: teachers read from tables, the others called per step.

    Args:
        reward_funcs: callables and/or names of built-ins (as for [`~clip_trl.rewards.RewardSet`]).
        weights: one weight per function (all 1 by default).
    """

    def __init__(self, reward_funcs: Any, weights: Sequence[float] | None = None) -> None:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError(
                "`reward_funcs` is empty; pass a teacher (e.g. `ClipScoreReward(teacher, processor)`)."
            )
        self.funcs = [get_reward_function(f) if isinstance(f, str) else f for f in funcs]
        if weights is not None and len(weights) != len(self.funcs):
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {len(self.funcs)} reward functions; "
                "give one weight per function."
            )
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.funcs)
        self.names = [reward_name(f) for f in self.funcs]
        self.teacher_positions = [i for i, f in enumerate(self.funcs) if is_teacher(f)]
        generic = [i for i, f in enumerate(self.funcs) if not is_teacher(f)]
        self.generic_positions = generic
        self._generic = RewardSet([self.funcs[i] for i in generic]) if generic else None
        self.tables: list[TeacherTable] = []
        self.calls = 0  # reward-function calls and teacher image passes

    @property
    def teachers(self) -> list[ClipScoreReward]:
        """Every teacher model among the rewards (tabled or not), for the distillation objective."""
        return [f for f in self.funcs if isinstance(f, ClipScoreReward)]

    def start_stream(self, texts: Sequence[str]) -> None:
        """Embed the candidate texts with each tabled teacher (once per stream)."""
        self.tables = [TeacherTable(self.funcs[i], texts) for i in self.teacher_positions]

    def teacher_cosines(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Each tabled teacher's `[B, C]` cosines for an episode's images (once per episode)."""
        self.calls += len(self.tables)
        return [table.cosines(images) for table in self.tables]

    def score(
        self,
        actions: torch.Tensor | None,
        mask: torch.Tensor,
        owner: torch.Tensor,
        cosines: list[torch.Tensor],
        probs: torch.Tensor,
        *,
        images: Sequence[Any],
        indices: Sequence[int],
        labels: Sequence[str],
        texts: Sequence[str],
    ) -> torch.Tensor:
        """The weighted total reward of each action: `[N, S]` for sampled `actions` (candidate indices), or
        `[N, C]` for every candidate of `mask` when `actions` is `None` (NaN outside it, and where no function
        applies). `owner[n]` is the position in the episode's inputs of query `n` (a view of that input)."""
        exact = actions is None
        rows = torch.nonzero(mask) if exact else None
        shape = mask.shape if exact else actions.shape
        columns: list[torch.Tensor | None] = [None] * len(self.funcs)
        for position, table, cos in zip(self.teacher_positions, self.tables, cosines):
            table_rewards = table.rewards(cos[owner], mask)
            columns[position] = table_rewards if exact else table_rewards.gather(1, actions)
        if self._generic is not None:
            self.calls += len(self.generic_positions)
            subsets = [torch.nonzero(row).flatten().tolist() for row in mask]
            slot = [{c: k for k, c in enumerate(subset)} for subset in subsets]
            if exact:
                entries = [(int(n), slot[int(n)][int(c)]) for n, c in rows]
            else:
                entries = [(n, slot[n][int(c)]) for n in range(shape[0]) for c in actions[n]]
            query_rows = [{"image": images[int(b)], "input_index": indices[int(b)]} for b in owner]
            completions, kwargs = reward_kwargs(
                entries,
                query_rows,
                [[labels[c] for c in subset] for subset in subsets],
                [[texts[c] for c in subset] for subset in subsets],
                [None] * shape[0],
                [[float(probs[n, c]) for c in subset] for n, subset in enumerate(subsets)],
                image_column="image",
            )
            matrix = self._generic(completions, **kwargs).per_function
            for column, position in enumerate(self.generic_positions):
                values = torch.full(shape, math.nan)
                if exact:
                    values[rows[:, 0], rows[:, 1]] = matrix[:, column]
                else:
                    values.copy_(matrix[:, column].view(shape))
                columns[position] = values
        stacked = torch.stack([c.float() for c in columns], dim=-1)
        weights = torch.tensor(self.weights)
        total = torch.nansum(stacked * weights, dim=-1)
        return total.masked_fill(torch.isnan(stacked).all(dim=-1), math.nan)
