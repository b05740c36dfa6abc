"""URPODataModule: exact shares in every batch, determinism, disjoint shards, resumable position, prompt limits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import pytest

from urpo.data.datamodule import URPODataModule
from urpo.data.mixture import kind_quotas
from urpo.data.sources import SourceSpec
from urpo.errors import ConfigError, DataError

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "urpo" / "data" / "samples"
THREE_KINDS = [
    SourceSpec(adapter="gsm8k", path=str(SAMPLES / "gsm8k_train.jsonl")),
    SourceSpec(adapter="hh_rlhf", path=str(SAMPLES / "hh_rlhf_harmless_base_test.jsonl")),
    SourceSpec(adapter="instructions", path=str(SAMPLES / "alpaca_eval_instructions.jsonl")),
]
SHARES = {"verifiable": 0.4, "preference": 0.3, "open": 0.3}


def batches(datamodule: URPODataModule, count: int) -> list[list]:
    datamodule.setup("fit")
    return [datamodule.mixer.next_batch() for _ in range(count)]


@pytest.mark.parametrize(
    ("shares", "size", "expected"),
    [
        (SHARES, 10, {"verifiable": 4, "preference": 3, "open": 3}),
        (SHARES, 8, {"verifiable": 3, "preference": 3, "open": 2}),  # remainders 0.2/0.4/0.4: ties go by kind order
        ({"verifiable": 1.0}, 5, {"verifiable": 5}),
        ({"verifiable": 2, "open": 1}, 3, {"verifiable": 2, "open": 1}),
    ],
)
def test_quotas_are_exact(shares, size, expected):
    assert kind_quotas(shares, size) == expected


def test_too_small_batch_for_the_mixture_is_an_error():
    with pytest.raises(ConfigError, match="too small"):
        kind_quotas(SHARES, 2)


def test_every_batch_holds_the_exact_share_of_each_kind():
    for batch in batches(URPODataModule(THREE_KINDS, mixture=SHARES, batch_size=10), 12):
        assert Counter(row.kind for row in batch) == {"verifiable": 4, "preference": 3, "open": 3}


def test_same_seed_same_batches_other_seed_other_batches():
    def keys(seed: int) -> list:
        L.seed_everything(seed)  # in-memory sources are shuffled with the run's seed
        return [[(r.source, r.index) for r in b] for b in batches(URPODataModule(THREE_KINDS, batch_size=6), 5)]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)


def test_weights_split_a_kind_between_its_sources(tmp_path):
    second = tmp_path / "more.jsonl"
    second.write_text((SAMPLES / "gsm8k_train.jsonl").read_text())
    sources = [
        SourceSpec(adapter="gsm8k", path=str(SAMPLES / "gsm8k_train.jsonl"), weight=3.0),
        SourceSpec(adapter="gsm8k", path=str(second), weight=1.0),
    ]
    drawn = Counter(r.source for b in batches(URPODataModule(sources, batch_size=4), 10) for r in b)
    assert drawn == {str(SAMPLES / "gsm8k_train.jsonl"): 30, str(second): 10}


def test_ranks_get_disjoint_rows_that_cover_the_source():
    seen = []
    for rank in range(2):
        datamodule = URPODataModule([THREE_KINDS[0]], batch_size=5)
        datamodule._rank = lambda rank=rank: (rank, 2)
        rows = [r.index for b in batches(datamodule, 10) for r in b]  # 50 rows: exactly one pass over 50 per rank
        assert len(set(rows)) == 50
        seen.append(set(rows))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(100))


def test_position_restores_the_same_following_batches():
    first = URPODataModule(THREE_KINDS, batch_size=6)
    drawn = batches(first, 3)
    state = {"mixer": first.mixer.state_dict(), "counters": {}}
    following = [[(r.source, r.index) for r in first.mixer.next_batch()] for _ in range(3)]
    resumed = URPODataModule(THREE_KINDS, batch_size=6)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert [[(r.source, r.index) for r in resumed.mixer.next_batch()] for _ in range(3)] == following
    assert len(drawn) == 3


def test_streamed_source_resumes_after_its_last_row(tmp_path):
    spec = SourceSpec(adapter="gsm8k", path=str(SAMPLES / "gsm8k_train.jsonl"), streaming=True)
    first = URPODataModule([spec], batch_size=4)
    assert [r.index for r in batches(first, 2)[1]] == [4, 5, 6, 7]  # streams keep file order
    resumed = URPODataModule([spec], batch_size=4)
    resumed.load_state_dict({"mixer": first.mixer.state_dict()})
    resumed.setup("fit")
    assert [r.index for r in resumed.mixer.next_batch()] == [8, 9, 10, 11]


def test_a_kind_with_a_share_but_no_source_is_an_error():
    with pytest.raises(ConfigError, match="no source"):
        batches(URPODataModule([THREE_KINDS[0]], mixture=SHARES, batch_size=10), 1)


def test_bad_rows_stop_setup_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n"
    )
    with pytest.raises(DataError) as error:
        batches(URPODataModule([SourceSpec(adapter="gsm8k", path=str(bad))], batch_size=1), 1)
    assert "bad.jsonl" in str(error.value) and "answer" in str(error.value) and "line 2" in str(error.value)


def test_skip_mode_counts_bad_rows(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\nnot json\n")
    datamodule = URPODataModule([SourceSpec(adapter="gsm8k", path=str(bad))], batch_size=1, on_bad_row="skip")
    assert [r.answer for r in batches(datamodule, 2)[0]] == ["2"]
    assert datamodule.skips.total == 1
    assert "skipped 1 bad records" in capsys.readouterr().out


class _FakeModule:
    """Stands in for the LightningModule: a tokenizer that counts characters and the player template."""

    class _Tokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

        def decode(self, ids):
            return "x" * len(ids)

    tokenizer = _Tokenizer()

    def prompt_text(self, row):
        return row.prompt  # a chat template that adds nothing


class _FakeTrainer:
    lightning_module = _FakeModule()
    global_rank, world_size = 0, 1


@pytest.mark.parametrize("overflow", ["drop", "truncate"])
def test_long_prompts_are_dropped_or_truncated_and_counted(overflow):
    datamodule = URPODataModule([THREE_KINDS[0]], batch_size=4, max_prompt_tokens=200, prompt_overflow=overflow)
    datamodule.trainer = _FakeTrainer()
    rows = [r for b in batches(datamodule, 5) for r in b]
    assert all(len(r.prompt) <= 200 for r in rows)
    key = "data/dropped_verifiable" if overflow == "drop" else "data/truncated_verifiable"
    assert datamodule.counters[key] > 0
