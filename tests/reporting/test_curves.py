"""The training-curves picture draws what means something: constant series (a KL of 0 with beta = 0, the exact
policy-gradient loss of ~1e-9) are named in a note, not drawn; the RL objective and expected rewards are."""

from matplotlib.figure import Figure

from clip_trl.reporting.curves import plot_training_curves


def _drawn(monkeypatch, history, path):
    figures = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1]
    )
    written = plot_training_curves(history, path)
    if not figures:
        return written, [], ""
    figure = figures[0]
    axes = [ax for ax in figure.axes if ax.get_visible()]
    note = figure._supxlabel.get_text() if figure._supxlabel is not None else ""
    return written, axes, note


def test_constant_series_are_named_not_drawn_and_the_objective_is_drawn(tmp_path, monkeypatch):
    # An exact-advantage RL run with beta = 0: the loss is zero in value (noise of 1e-9), the KL exactly 0.
    history = [
        {
            "loss": 1e-9 * (-1) ** step,
            "kl": 0.0,
            "reward": 0.2 + 0.1 * step,
            "reward_std": 0.1,
            "objective": 0.25 + 0.1 * step,
            "rewards/correctness/expected": 0.2 + 0.05 * step,
            "rewards/graded/expected": 0.4 + 0.02 * step,
            "step": step,
        }
        for step in range(1, 6)
    ]
    written, axes, note = _drawn(monkeypatch, history, tmp_path / "rl.png")
    assert written is not None
    assert [ax.get_title() for ax in axes] == ["Objective", "Reward", "Expected reward under π"]
    legend = [text.get_text() for text in axes[2].get_legend().get_texts()]
    assert legend == ["correctness", "graded"]
    assert note == "Constant over the run, not drawn: Loss ≈ 0 (|x| ≤ 1e-09); KL to the reference policy = 0."
    assert note and axes[0].xaxis.label.get_fontsize() >= 8


def test_a_varying_loss_and_kl_are_drawn_and_a_constant_eval_line_is_noted(tmp_path, monkeypatch):
    history = [{"loss": 2.0 - 0.1 * s, "kl": 0.001 * s, "reward": 0.5, "step": s} for s in range(1, 4)]
    history += [{"eval_loss": 1.5, "step": 1}, {"eval_loss": 1.5, "step": 3}]
    _, axes, note = _drawn(monkeypatch, history, tmp_path / "c.png")
    assert [ax.get_title() for ax in axes] == ["Loss", "KL to the reference policy"]
    assert note == "Constant over the run, not drawn: Loss (eval) = 1.5; Reward = 0.5."
    assert len(axes[0].get_lines()) == 1  # the training loss only


def test_a_single_point_is_drawn_and_a_log_of_constants_only_draws_nothing(tmp_path, monkeypatch):
    _, axes, note = _drawn(monkeypatch, [{"kl": 0.0, "step": 1}], tmp_path / "one.png")
    assert [ax.get_title() for ax in axes] == ["KL to the reference policy"] and note == ""
    flat = [{"loss": 0.0, "kl": 0.0, "step": s} for s in range(3)]
    assert plot_training_curves(flat, tmp_path / "flat.png") is None
    assert not (tmp_path / "flat.png").exists()
