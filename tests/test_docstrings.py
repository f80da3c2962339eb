"""Every public docstring example in `clip_trl` runs and shows what it claims (as transformers' doctests do).

Each docstring with `>>>` lines is one test, run in a fresh temporary folder (examples write `output_dir`s),
offline, with doctest's ELLIPSIS and NORMALIZE_WHITESPACE.
"""

import doctest
import importlib
import pkgutil
import re

import pytest

import clip_trl


def _docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for module in pkgutil.walk_packages(clip_trl.__path__, "clip_trl."):
        if module.name.rsplit(".", 1)[-1].startswith("_") or ".clip_retrieval" in module.name:
            continue  # private modules; the evaluate module's script is loaded by `evaluate`, not imported
        imported = importlib.import_module(module.name)
        tests.extend(test for test in finder.find(imported, module.name) if test.examples)
    return sorted(tests, key=lambda test: test.name)


EXAMPLES = _docstring_examples()

# `Trainer.train()` prints each logged dict ({'loss': ..., 'epoch': ...}); that is progress output, not
# part of what an example claims.
_TRAIN_SUMMARY = re.compile(r"^\{'[^\n]*'epoch': [^\n]*\}\n", re.MULTILINE)


class _Checker(doctest.OutputChecker):
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(want, _TRAIN_SUMMARY.sub("", got), optionflags)


def test_the_public_api_has_examples():
    names = {test.name for test in EXAMPLES}
    for expected in (
        "clip_trl.trainer.rl_trainer.ClipRLTrainer",
        "clip_trl.trainer.rl_config.ClipRLConfig",
        "clip_trl.trainer.contrastive_trainer.ClipContrastiveTrainer",
        "clip_trl.rewards.scoring.RewardSet",
    ):
        assert expected in names


@pytest.mark.parametrize("example", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_docstring_example(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = doctest.DocTestRunner(
        checker=_Checker(), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    report: list[str] = []
    result = runner.run(example, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
