import pytest
import torch
from clip_test_utils import colour_dataset

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.losses.ranking import plackett_luce_log_prob
from clip_trl.models.modeling import encode_pair

LABELS = ["cat", "dog", "bird", "fish", "frog"]


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=6,
        learning_rate=1e-3,
        max_steps=1,
        num_samples=4,
        list_size=2,
        candidate_labels=LABELS,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        beta=0.0,
    )
    return ClipRLConfig(**{**defaults, **overrides})


def labelled():
    return colour_dataset(["x"] * 6).add_column("label", [0, 1, 2, 3, 4, 0])


def test_a_list_reward_receives_one_ranked_list_per_sample(tmp_path, tiny):
    model, processor = tiny
    calls = []

    def list_reward(completions, **kwargs):
        calls.append((completions, kwargs))
        return [float(len(set(c))) for c in completions]

    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=list_reward,
        args=make_args(tmp_path),
        train_dataset=labelled(),
        processing_class=processor,
    )
    trainer.train()
    ((completions, kwargs),) = calls
    assert len(completions) == 6 * 4  # queries × samples
    assert all(len(c) == 2 and len(set(c)) == 2 and set(c) <= set(LABELS) for c in completions)
    assert kwargs["list_size"] == 2
    assert [[LABELS[k] for k in chosen] for chosen in kwargs["chosen"]] == completions
    assert kwargs["chosen_text"][0] == [f"a photo of a {c}." for c in completions[0]]
    truth = kwargs["ground_truth"]
    assert all(len(set(truth[q * 4 : q * 4 + 4])) == 1 for q in range(6)) and len(kwargs["images"]) == 24
    assert sorted(set(truth)) == sorted(LABELS)
    # `probs` is each list's Plackett–Luce probability: of 20 possible lists, a query's distinct ones sum below 1.
    for q in range(6):
        distinct = dict(
            zip(map(tuple, kwargs["chosen"][q * 4 : q * 4 + 4]), kwargs["probs"][q * 4 : q * 4 + 4])
        )
        assert 0 < sum(distinct.values()) < 1


def test_a_set_reward_trains_end_to_end(tmp_path, tiny):
    """Reward: 1 when 'fish' is anywhere in the top-2 list. Training raises P(fish in the top 2)."""
    model, processor = tiny
    data = labelled()

    def fish_in_list(completions, **kwargs):
        return [float("fish" in c) for c in completions]

    def p_fish_in_top2(m):
        batch = trainer.data_collator([dict(row, row_index=i) for i, row in enumerate(data)])
        with torch.no_grad():
            images, texts = encode_pair(m, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
            scale = m.logit_scale.exp()
            log_probs = torch.log_softmax(scale * images @ texts.T, dim=-1)
        fish = LABELS.index("fish")
        pairs = [[fish, k] for k in range(5) if k != fish] + [[k, fish] for k in range(5) if k != fish]
        lists = torch.tensor(pairs)[None].expand(len(data), -1, -1)
        return plackett_luce_log_prob(log_probs, lists).exp().sum(dim=1).mean().item()

    args = make_args(tmp_path, max_steps=15, learning_rate=5e-3, num_samples=6)
    trainer = ClipRLTrainer(
        model=model, reward_funcs=fish_in_list, args=args, train_dataset=data, processing_class=processor
    )
    before = p_fish_in_top2(trainer.model)
    trainer.train()
    after = p_fish_in_top2(trainer.model)
    assert after > before + 0.2, (before, after)
    logs = [e for e in trainer.state.log_history if "reward" in e]
    assert logs[-1]["reward"] > logs[0]["reward"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(advantage="exact"), r"`list_size=2` samples ranked lists, which `advantage='exact'` cannot"),
        (dict(list_size=6), r"`list_size=6` exceeds the 5 candidates of `candidates='labels'`"),
        (dict(list_size=0), r"`list_size` must be a positive integer or None, got 0"),
        (dict(num_iterations=2), r"`list_size` does not support `num_iterations=2`"),
    ],
)
def test_list_size_config_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)
