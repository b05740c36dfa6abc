"""Reading sources: specs, files of every format, bad lines, skip reports, sharding, resuming and streaming."""

from __future__ import annotations

import collections
import gzip
import json
import shutil
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import FIXTURES, SAMPLES, SYNTHETIC, native_records

from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow
from urpo.data.sources import SkipReport, SourceSpec, iter_source, load_source
from urpo.errors import ConfigError, DataError

GSM8K = str(SAMPLES / "gsm8k_train.jsonl")
HH_BAD = str(FIXTURES / "hh_rlhf_harmless_base_test_rows_80_99.jsonl")


# ---------------------------------------------------------------- specs


def test_spec_defaults_and_kind():
    spec = SourceSpec(adapter="gsm8k", path=GSM8K)
    assert (spec.name, spec.kind, spec.split, spec.weight, spec.limit, spec.streaming) == (
        GSM8K,
        "verifiable",
        "train",
        1.0,
        None,
        False,
    )
    assert SourceSpec(adapter="generic", path="x.jsonl").kind is None
    assert SourceSpec(adapter="gsm8k", hub="openai/gsm8k", subset="main").name == "openai/gsm8k[main]:train"
    assert SourceSpec(adapter="hh_rlhf", hub="Anthropic/hh-rlhf", split="test").name == "Anthropic/hh-rlhf:test"
    assert SourceSpec(adapter="hh_rlhf", path="a.jsonl", name="hh").name == "hh"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "a.jsonl", "hub": "x/y"}, "exactly one"),
        ({}, "exactly one"),
        ({"path": "a.csv"}, "unsupported"),
        ({"path": "a.jsonl", "weight": 0}, "weight"),
        ({"path": "a.jsonl", "weight": -1.0}, "weight"),
        ({"path": "a.jsonl", "weight": float("inf")}, "weight"),
        ({"path": "a.jsonl", "limit": 0}, "limit"),
        ({"path": "a.jsonl", "adapter": "csv"}, "unknown adapter"),
    ],
)
def test_spec_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SourceSpec(**{"adapter": "gsm8k", **kwargs})


# ---------------------------------------------------------------- formats of files


@pytest.mark.parametrize(
    ("adapter", "file", "count", "row_type"),
    [
        ("gsm8k", "gsm8k_train.jsonl", 100, VerifiableRow),
        ("hh_rlhf", "hh_rlhf_harmless_base_test.jsonl", 60, PreferenceRow),
        ("instructions", "alpaca_eval_instructions.jsonl", 60, OpenRow),
        ("alpaca_eval_annotations", "alpaca_eval_annotations.json", 40, PreferenceRow),
    ],
)
def test_shipped_samples_load_whole(adapter, file, count, row_type):
    spec = SourceSpec(adapter=adapter, path=str(SAMPLES / file))
    rows, report = load_source(spec)
    assert len(rows) == count and report.total == 0
    assert all(isinstance(r, row_type) for r in rows)
    assert [r.index for r in rows] == list(range(count)) and {r.source for r in rows} == {spec.path}


def test_generic_source_mixes_kinds():
    rows, _ = load_source(SourceSpec(adapter="generic", path=str(SYNTHETIC / "generic.jsonl")))
    assert [r.kind for r in rows] == ["verifiable", "preference", "preference", "open", "open"]


def test_gzip_jsonl_reads_like_plain(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    with open(SAMPLES / "hh_rlhf_harmless_base_test.jsonl", "rb") as plain, gzip.open(path, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    rows, _ = load_source(SourceSpec(adapter="hh_rlhf", path=str(path), limit=5))
    plain = SourceSpec(adapter="hh_rlhf", path=str(SAMPLES / "hh_rlhf_harmless_base_test.jsonl"), limit=5)
    expected, _ = load_source(plain)
    assert [r.responses for r in rows] == [r.responses for r in expected]


def test_parquet_reads_and_resumes_across_row_groups(tmp_path):
    records = native_records(SAMPLES / "gsm8k_train.jsonl")
    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=16)
    spec = SourceSpec(adapter="gsm8k", path=str(path))
    rows, _ = load_source(spec)
    assert len(rows) == 100 and rows[0].answer == "72" and rows[99].index == 99
    resumed = list(iter_source(spec, start=37))
    assert [r.index for r in resumed] == list(range(37, 100)) and resumed[0].prompt == records[37]["question"]


def test_json_source_must_be_a_list(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"instruction": "hi"}))
    with pytest.raises(DataError, match="list of records"):
        load_source(SourceSpec(adapter="instructions", path=str(path)))
    path.write_text('[\n {"instruction": "hi"},\n oops\n]')
    with pytest.raises(DataError, match="invalid JSON at line 3") as info:
        load_source(SourceSpec(adapter="instructions", path=str(path)))
    assert info.value.source == str(path)


# ---------------------------------------------------------------- bad files and lines


def test_invalid_json_line_names_file_and_line(write_jsonl):
    path = write_jsonl([{"instruction": "one"}, "", '{"instruction": "two"', {"instruction": "three"}])
    with pytest.raises(DataError, match="line 3: invalid JSON") as info:
        load_source(SourceSpec(adapter="instructions", path=str(path)))
    assert str(path) in str(info.value) and info.value.row == 1  # 0-based record index; the blank line is no record


def test_adapter_error_names_field_row_and_line():
    with pytest.raises(DataError) as info:
        load_source(SourceSpec(adapter="hh_rlhf", path=HH_BAD, name="hh"))
    assert (info.value.source, info.value.row, info.value.field) == ("hh", 6, "chosen")
    assert str(info.value) == "hh, row 6, field 'chosen': the last assistant reply is empty (line 7)"


def test_not_utf8_line_is_a_bad_record(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        load_source(SourceSpec(adapter="instructions", path=str(path)))
    rows, report = load_source(SourceSpec(adapter="instructions", path=str(path)), on_bad_row="skip")
    assert [r.prompt for r in rows] == ["ok"] and report.counts == {str(path): 1}


def test_missing_and_empty_files(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="file not found"):
        load_source(SourceSpec(adapter="gsm8k", path=str(tmp_path / "absent.jsonl")))
    for lines in ([], ["", "   "]):
        path = write_jsonl(lines)
        with pytest.raises(DataError, match="no valid rows") as info:
            load_source(SourceSpec(adapter="gsm8k", path=str(path)))
        assert info.value.source == str(path)


def test_skip_mode_counts_bad_records():
    spec = SourceSpec(adapter="hh_rlhf", path=HH_BAD, name="hh")
    rows, report = load_source(spec, on_bad_row="skip")
    assert len(rows) == 19 and 6 not in [r.index for r in rows]
    assert report.counts == {"hh": 1} and report.total == 1
    assert report.examples == ["hh, row 6, field 'chosen': the last assistant reply is empty (line 7)"]
    assert report.summary().startswith("skipped 1 bad records (hh: 1); first: hh, row 6")
    annotations = SourceSpec(
        adapter="alpaca_eval_annotations", path=str(FIXTURES / "alpaca_eval_annotations_rows_100_139.json")
    )
    rows, more = load_source(annotations, on_bad_row="skip")
    assert len(rows) == 39 and more.total == 1 and "row 6, field 'preference'" in more.examples[0]
    report.merge(more)
    assert report.total == 2 and len(report.counts) == 2 and len(report.examples) == 2


def test_skip_mode_with_no_valid_row_is_an_error(write_jsonl):
    path = write_jsonl(["not json", {"question": "q"}])
    with pytest.raises(DataError, match=r"no valid rows \(2 records read, 2 bad ones skipped\)"):
        load_source(SourceSpec(adapter="gsm8k", path=str(path)), on_bad_row="skip")


def test_skip_report_keeps_first_examples_only():
    report = SkipReport(max_examples=2)
    for i in range(4):
        report.add("s", DataError("bad", source="s", row=i))
    assert report.total == 4 and report.examples == ["s, row 0: bad", "s, row 1: bad"]
    assert SkipReport().summary() == "skipped 0 bad records"


# ---------------------------------------------------------------- limit, sharding, resuming


def test_limit_counts_records_of_the_whole_source():
    spec = SourceSpec(adapter="gsm8k", path=GSM8K, limit=10)
    assert [r.index for r in load_source(spec)[0]] == list(range(10))
    assert [r.index for r in load_source(spec, rank=1, world_size=3)[0]] == [1, 4, 7]


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_is_disjoint_and_complete(world_size):
    spec = SourceSpec(adapter="gsm8k", path=GSM8K)
    whole = {r.index: r for r in load_source(spec)[0]}
    shards = [load_source(spec, rank=rank, world_size=world_size)[0] for rank in range(world_size)]
    indices = [[r.index for r in shard] for shard in shards]
    assert all(i % world_size == rank for rank, shard in enumerate(indices) for i in shard)
    assert sum(len(s) for s in indices) == 100 and sorted(i for s in indices for i in s) == list(range(100))
    assert all(r == whole[r.index] for shard in shards for r in shard)


def test_resume_from_start_index():
    spec = SourceSpec(adapter="gsm8k", path=GSM8K)
    assert [r.index for r in iter_source(spec, start=97)] == [97, 98, 99]
    assert next(iter_source(spec, rank=1, world_size=2, start=37)).index == 37
    assert next(iter_source(spec, rank=1, world_size=2, start=38)).index == 39
    assert list(iter_source(spec, start=100)) == []  # resuming at the end is not an empty source


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"world_size": 0}, "rank"),
        ({"start": -1}, "start"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
    ],
)
def test_iteration_arguments_fail_at_once(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        iter_source(SourceSpec(adapter="gsm8k", path=GSM8K), **kwargs)


# ---------------------------------------------------------------- streaming a big file


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory) -> tuple[Path, int]:
    """A ~20 MB JSONL file of open instructions, each record ~2 KB."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 75
    count = 10_000
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            file.write(json.dumps({"instruction": f"Task {i}: {filler}", "output": f"answer {i}"}) + "\n")
    assert path.stat().st_size > 20_000_000
    return path, count


def test_streaming_reads_lazily_in_bounded_memory(big_jsonl):
    path, count = big_jsonl
    spec = SourceSpec(adapter="instructions", path=str(path), streaming=True)
    tracemalloc.start()
    try:
        rows = iter_source(spec)
        first = next(rows)
        first_peak = tracemalloc.get_traced_memory()[1]
        last = collections.deque(rows, maxlen=1)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.index == 0 and first.prompt.startswith("Task 0: lorem") and first.reference == "answer 0"
    assert last.index == count - 1 and last.prompt.startswith(f"Task {count - 1}: ")
    assert last.reference == f"answer {count - 1}"
    # The file is > 20 MB; reading it must never hold more than a sliver of it.
    assert first_peak < 1_000_000 and peak < 2_000_000


# ---------------------------------------------------------------- hub datasets (load_dataset faked: no network)


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_source_reads_through_load_dataset(monkeypatch, streaming):
    import datasets

    records = native_records(SAMPLES / "gsm8k_train.jsonl")[:20]
    calls = []

    def fake_load_dataset(path, name=None, *, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        dataset = datasets.Dataset.from_list(records)
        return dataset.to_iterable_dataset() if streaming else dataset

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = SourceSpec(adapter="gsm8k", hub="openai/gsm8k", subset="main", streaming=streaming)
    rows, _ = load_source(spec, rank=1, world_size=2)
    assert [r.index for r in rows] == list(range(1, 20, 2)) and rows[0].answer == "10"
    assert {r.source for r in rows} == {"openai/gsm8k[main]:train"}
    assert [r.index for r in iter_source(spec, start=17)] == [17, 18, 19]
    assert calls[0] == ("openai/gsm8k", "main", "train", streaming)


def test_hub_load_failure_is_a_data_error(monkeypatch):
    import datasets

    def failing_load_dataset(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError, match="cannot load hub dataset 'x/y': no network") as info:
        load_source(SourceSpec(adapter="gsm8k", hub="x/y"))
    assert info.value.source == "x/y:train"
