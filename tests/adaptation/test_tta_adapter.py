"""ClipTestTimeAdapter: exact episodic resets, the online moving average, what adapts, and bad input."""

import copy
import json

import pytest
import torch
from PIL import Image

from clip_trl.adaptation import ClipTestTimeAdapter, ClipTestTimeConfig, TestTimeAdaptationError
from clip_trl.adaptation.stream_rewards import StreamRewards
from clip_trl.offline import build_clip
from clip_trl.rewards import ClipScoreReward, TeacherProbabilityReward

LABELS = ["red", "green", "blue", "white"]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 230), (250, 250, 250), (120, 60, 200)]


def images(n, offset=0):
    return [Image.new("RGB", (32, 32), COLOURS[(i + offset) % len(COLOURS)]) for i in range(n)]


@pytest.fixture(scope="module")
def teacher():
    """Another tiny CLIP as the teacher; its softmax over the candidates is the reward (never all equal)."""
    return TeacherProbabilityReward(*build_clip("tiny", seed=1))


def make(tiny, rewards, **settings):
    model, processor = tiny
    settings = {"candidate_labels": LABELS, "learning_rate": 0.05, "steps": 2, **settings}
    return ClipTestTimeAdapter(model, ClipTestTimeConfig(**settings), processor, reward_funcs=rewards)


def test_episodic_prediction_does_not_depend_on_the_inputs_before_it(tiny, teacher):
    adapter = make(tiny, teacher, n_views=4, selection_fraction=0.5, advantage="reinforce", num_samples=4)
    stream = images(4)
    other = images(3, offset=2) + [stream[3]]  # input 3 is the same image, after three different ones
    first, second = adapter.adapt(stream), adapter.adapt(other)
    assert first.predictions[3] == second.predictions[3]
    alone = make(tiny, teacher, objective="none").adapt(stream)
    # Adaptation did change the model's answer (else the test would be empty).
    assert first.predictions[3]["probability"] != pytest.approx(alone.predictions[3]["probability"], abs=1e-6)


@pytest.mark.parametrize(
    ("which", "prefix"),
    [
        ("image_norms", ("vision_model.",)),
        ("image_tower", ("vision_model.", "visual_projection")),
        ("all", ("",)),
    ],
)
def test_only_the_chosen_parameters_change_and_the_base_is_restored(tiny, teacher, which, prefix):
    adapter = make(tiny, teacher, adapt_parameters=which, advantage="exact")
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    during = []
    reset = adapter.reset

    def spy():
        during.append({k: v.clone() for k, v in adapter.model.state_dict().items()})
        reset()

    adapter.reset = spy
    adapter.adapt(images(2))
    changed = {k for k, v in during[0].items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(adapter.parameters)
    assert all(k.startswith(prefix) for k in changed), changed
    if which == "image_norms":
        assert all("norm" in k for k in changed)
    assert "logit_scale" not in changed
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())
    assert not adapter.optimizer.state  # the optimizer starts afresh too


def test_lora_adapters_adapt_and_the_base_weights_stay(tiny, teacher):
    from peft import LoraConfig

    model, processor = tiny
    args = ClipTestTimeConfig(
        candidate_labels=LABELS, adapt_parameters="lora", learning_rate=0.05, advantage="exact"
    )
    adapter = ClipTestTimeAdapter(
        model,
        args,
        processor,
        reward_funcs=teacher,
        peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
    )
    assert adapter.parameters and all("lora_" in name for name in adapter.parameters)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    adapter.adapt(images(2))
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())


def test_online_moving_average_matches_a_hand_computation(tiny, teacher):
    adapter = make(tiny, teacher, mode="online", ema_decay=0.6, advantage="exact", reset_every=3)
    adapter._start_stream([f"a photo of a {label}." for label in LABELS])
    start = adapter.trainable_state()
    expected = {k: v.clone() for k, v in start.items()}
    for step, image in enumerate(images(3)):
        predictions = adapter.adapt_batch([image], [step], LABELS)
        if step == 2:  # reset_every=3: everything back to the start
            assert all(torch.equal(v, start[k]) for k, v in adapter.ema_state().items())
            assert all(torch.equal(v, start[k]) for k, v in adapter.trainable_state().items())
            break
        fast = adapter.trainable_state()
        assert any(not torch.equal(fast[k], start[k]) for k in fast)  # the weights carry on adapting
        expected = {k: 0.6 * expected[k] + 0.4 * fast[k] for k in expected}
        ema = adapter.ema_state()
        for k in expected:
            torch.testing.assert_close(ema[k], expected[k], rtol=0, atol=1e-6)
        # The prediction is the moving average's.
        held = copy.deepcopy(adapter.model)
        held.load_state_dict({**held.state_dict(), **ema})
        probe = make((held, tiny[1]), teacher, objective="none")
        probe._start_stream(adapter._texts)
        assert probe.adapt_batch([image], [step], LABELS)[0]["probability"] == pytest.approx(
            predictions[0]["probability"], abs=1e-6
        )


def test_teacher_tables_score_as_the_reward_callables_do(tiny):
    model, processor = tiny  # a copy: a teacher reward freezes the model it is given
    texts = [f"a photo of a {label}." for label in LABELS]
    image = images(1)[0]
    mask = torch.tensor([[True, False, True, True]])
    chosen = [0, 2, 3]
    options = [texts[c] for c in chosen]
    for reward in (ClipScoreReward(model, processor), TeacherProbabilityReward(model, processor)):
        rewards = StreamRewards(reward)
        rewards.start_stream(texts)
        cos = rewards.teacher_cosines([image])
        table = rewards.score(
            None,
            mask,
            torch.tensor([0]),
            cos,
            torch.full((1, 4), 0.25),
            images=[image],
            indices=[0],
            labels=LABELS,
            texts=texts,
        )
        direct = reward(
            [LABELS[c] for c in chosen],
            images=[image] * 3,
            chosen_text=options,
            candidate_texts=[options] * 3,
            chosen=[0, 1, 2],
        )
        torch.testing.assert_close(table[0, chosen], torch.tensor(direct), rtol=1e-5, atol=1e-6)
        assert torch.isnan(table[0, 1])


def test_an_empty_candidate_set_is_an_error(tiny, teacher):
    with pytest.raises(ValueError, match="The candidate set is empty"):
        make(tiny, teacher, candidate_labels=None).adapt(images(2), candidates=[])


def test_a_reward_that_raises_names_the_input_and_keeps_the_predictions(tiny, teacher, tmp_path):
    def flaky(completions, input_index, **kwargs):
        if input_index[0] == 2:
            raise RuntimeError("service down")
        return [1.0 if c == "red" else 0.0 for c in completions]

    adapter = make(tiny, [teacher, flaky], output_dir=str(tmp_path))
    with pytest.raises(
        TestTimeAdaptationError, match=r"failed on input 2: .*'flaky' raised .*service down"
    ) as info:
        adapter.adapt(images(4))
    assert info.value.index == 2
    assert [p["index"] for p in info.value.predictions] == [0, 1]
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]
    assert all(torch.equal(v, adapter._start[k]) for k, v in adapter.trainable_state().items())


def test_an_image_that_fails_to_decode_is_named_and_raised_or_skipped(tiny, teacher, tmp_path):
    stream = [images(1)[0], b"not an image", images(1)[0]]
    with pytest.raises(TestTimeAdaptationError, match=r"Input 1 of the stream cannot be decoded") as info:
        make(tiny, teacher).adapt(stream)
    assert [p["index"] for p in info.value.predictions] == [0]
    result = make(tiny, teacher, on_bad_image="skip", output_dir=str(tmp_path)).adapt(stream)
    assert [p["index"] for p in result.predictions] == [0, 2]
    assert result.skipped[0]["index"] == 1 and "cannot decode" in result.skipped[0]["reason"]
    report = json.loads((tmp_path / "adaptation_report.json").read_text())
    assert report["stats"]["inputs"] == 2 and report["skipped"][0]["index"] == 1
    assert "1 skipped" in (tmp_path / "adaptation_report.md").read_text()


def test_objectives_need_what_they_use(tiny):
    with pytest.raises(ValueError, match="objective='reward' needs `reward_funcs`"):
        make(tiny, None)
    with pytest.raises(ValueError, match="objective='distillation' needs a teacher"):
        make(tiny, "correctness", objective="distillation")
    with pytest.raises(ValueError, match="adapt_parameters='lora' selects no parameter"):
        make(tiny, "correctness", adapt_parameters="lora")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        ClipTestTimeConfig(mode="sometimes")


@pytest.mark.parametrize("objective", ["entropy", "distillation"])
def test_the_baseline_objectives_adapt(tiny, teacher, objective):
    adapted = make(tiny, teacher, objective=objective, n_views=4, selection_fraction=0.5).adapt(images(2))
    plain = make(tiny, teacher, objective="none").adapt(images(2))
    assert adapted.predictions[0]["probability"] != pytest.approx(
        plain.predictions[0]["probability"], abs=1e-6
    )
    assert adapted.stats["steps_per_input"] == 2.0 and plain.stats["steps_per_input"] == 0.0


def test_online_weights_are_saved_with_a_model_card(tiny, teacher, tmp_path):
    adapter = make(tiny, teacher, mode="online", advantage="exact")
    adapter.adapt(images(2))
    adapter.save_model(str(tmp_path / "online"))
    assert "test-time-adaptation" in (tmp_path / "online" / "README.md").read_text()
    with pytest.raises(ValueError, match="episodic adaptation leaves none to save"):
        make(tiny, teacher).save_model(str(tmp_path / "episodic"))
