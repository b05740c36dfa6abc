"""configs/demo.yaml stays honest: its rows load, every batch holds all three kinds, its player asks for the answer
format the verifier reads, and its referee template reads SmolLM2-135M's real replies (recorded from the model) the
way docs/referee.md says, never crediting an echo of the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from urpo.data.formats import ADAPTERS
from urpo.data.mixture import kind_quotas
from urpo.data.sources import SourceSpec, iter_source
from urpo.prompts import PlayerTemplate
from urpo.referee import ParsedRanking, ParseFailure, RefereeTemplate
from urpo.rewards.verifier import MathVerifier

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())


def demo_referee() -> RefereeTemplate:
    return RefereeTemplate(**DEMO["model"]["referee"])


def test_every_demo_source_loads_and_every_batch_holds_all_three_kinds():
    kinds = {}
    for source in DEMO["data"]["sources"]:
        spec = SourceSpec(adapter=source["adapter"], path=str(ROOT / source["path"]))
        rows = list(iter_source(spec))
        assert len(rows) >= 40, source["path"]
        kinds.update({row.kind: kinds.get(row.kind, 0) + 1 for row in rows})
    assert set(kinds) == {"verifiable", "preference", "open"}
    quotas = kind_quotas(DEMO["data"]["mixture"], DEMO["data"]["batch_size"])
    assert set(quotas) == {"verifiable", "preference", "open"} and all(q >= 1 for q in quotas.values())
    assert ADAPTERS["generic"].kind is None  # the written rows say their own kind


def test_the_demo_player_asks_for_the_format_the_verifier_reads():
    suffix = DEMO["model"]["player"]["verifiable_suffix"]
    assert "\\boxed{}" in suffix and PlayerTemplate(verifiable_suffix=suffix).verifiable_suffix == suffix
    # SmolLM2-135M's replies to the demo prompt (T=0.7-1.0), as the verifier reads them
    verifier = MathVerifier()
    assert verifier.extract("Tom has 3 + 4 = \\boxed{7} apples.") == "7"
    assert verifier.is_correct("7", "7")
    assert verifier.extract("Sara had 10 candies and ate three, so 10 - 3 = 7 candies were left") is None


# Replies SmolLM2-135M-Instruct wrote after the prefilled "<ranking>" (recorded while choosing the demo template).
SMOLLM2_REPLIES = [
    ("B > A</ranking>", ((1,), (0,))),
    ("A > B</ranking>\nUser prompt ends", ((0,), (1,))),
    ("B > A</ranking> \nState ", ((1,), (0,))),
    ("B > A</ranking>\nA banana and", ((1,), (0,))),
    ("A > C > B</ranking>", "label_out_of_range"),
    ("A > A </ranking>", "duplicate_label"),
    ("A B</ranking>\n[Response A]", "bad_token"),
    ("B | A</ranking>", "bad_token"),
    ("A > B > C > D> WEST", "no_ranking"),
    ("A > B<\n\nA sweet delight for", "no_ranking"),
    ("TruBat KTIs>Ug", "no_ranking"),
]


@pytest.mark.parametrize(("reply", "expected"), SMOLLM2_REPLIES)
def test_the_demo_referee_reads_smollm2_replies(reply, expected):
    template = demo_referee()
    messages = template.messages("What is the capital of France?", ["Paris.", "Berlin."], [0, 1])
    prompt = "\n".join(m["content"] for m in messages)
    result = template.parse(reply, 2, prompt)
    if isinstance(expected, str):
        assert isinstance(result, ParseFailure) and result.reason == expected
    else:
        assert result == ParsedRanking(expected)


def test_the_demo_referee_starts_the_reply_and_never_credits_an_echo():
    template = demo_referee()
    assert template.response_prefix == template.open_tag  # the verdict comes first
    for n in (2, 4):
        messages = template.messages("Which is best?", [f"answer {i}" for i in range(n)], list(range(n)))
        assert messages[-1] == {"role": "assistant", "content": template.open_tag}
        prompt = "\n".join(m["content"] for m in messages)
        user = messages[-2]["content"]
        for echo in (user, prompt, user.split("\n\n")[0], user.split("\n\n")[-1]):
            result = template.parse(echo, n, prompt)
            assert isinstance(result, ParseFailure) and result.reason == "no_ranking", echo
