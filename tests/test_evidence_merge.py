"""tools.evidence.merge: two runs of the same world as one table, refused where they are not parts of one run."""

import copy
import json

import pytest

from tests.evidence_documents import documented_with_a_dropped_seed
from tools.evidence.compare import restrict
from tools.evidence.merge import MergeError, main, merge
from tools.evidence.names import seed_of


@pytest.fixture
def documented():
    return documented_with_a_dropped_seed()


def part(document, seeds, command):
    """The documented run as if a command had asked only ``seeds`` (its runs, meta and summary narrowed)."""
    narrowed = restrict(document, seeds)
    runs = {name: run for name, run in document["runs"].items() if seed_of(name) in seeds}
    meta = {**narrowed["meta"], "command": command, "wall_seconds": 100.0 * len(seeds)}
    return {**narrowed, "meta": meta, "runs": runs}


def test_two_parts_of_a_run_merge_into_its_table(documented, tmp_path):
    asked = documented["meta"]["seeds_asked"]
    low, high = [s for s in asked if s < 3], [s for s in asked if s >= 3]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(part(documented, low, "run A")))
    (tmp_path / "b" / "results.json").write_text(json.dumps(part(documented, high, "run B")))
    merged = main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged")])
    assert merged["meta"]["seeds"] == documented["meta"]["seeds"]
    assert merged["meta"]["seeds_asked"] == asked
    assert merged["meta"]["failed_gates"] == documented["meta"]["failed_gates"]
    assert merged["summary"]["comparisons"] == documented["summary"]["comparisons"]
    assert merged["summary"]["urpo"]["open_accuracy"] == documented["summary"]["urpo"]["open_accuracy"]
    assert merged["meta"]["command"] == "run A ; run B" and merged["meta"]["wall_seconds"] == 100.0 * len(asked)
    table = (tmp_path / "merged" / "results.md").read_text()
    assert f"Merged by tools.evidence.merge from `run A` (seeds {low}, {100 * len(low)} s" in table
    assert (tmp_path / "merged" / "final_scores.png").exists()


def test_a_second_draw_replaces_the_seed_that_missed_and_is_named(documented):
    failed = min(seed_of(n) for n in documented["meta"]["failed_gates"])
    kept = [s for s in documented["meta"]["seeds"] if s != failed]
    base = part(documented, [s for s in documented["meta"]["seeds_asked"] if s != kept[0]], "base")
    # ADDED: the kept seed's runs, relabelled as the failed seed's second draw, run with two draws allowed.
    added = part(documented, [kept[0]], "redraw")
    added["runs"] = {n.replace(f"/{kept[0]}", f"/{failed}"): copy.deepcopy(r) for n, r in added["runs"].items()}
    added["runs"][f"warm_start/{failed}"]["draw"] = 1
    for meta in (base["meta"], added["meta"]):
        meta["warm_start"] = {**meta["warm_start"], "draws": 1}
    added["meta"].update(seeds=[failed], seeds_asked=[failed], failed_gates={})
    added["meta"]["warm_start"]["draws"] = 2
    with pytest.raises(MergeError, match=r"missed the gate in BASE with 1 draw\(s\); ADDED allows 2: run them again"):
        merge(base, added)  # the other seeds that missed in BASE would have had a second draw too
    base["meta"]["failed_gates"] = {f"warm_start/{failed}": "missed"}
    runs, meta = merge(base, added)
    assert failed in meta["seeds"] and meta["failed_gates"] == {}
    assert runs[f"warm_start/{failed}"]["draw"] == 1 and "Seeds asked" not in meta["note"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["rl"].update(steps=7), r"meta\.rl differs"),
        (lambda m: m["warm_start"].update(verdict_noise=0.0), r"warm_start differs \(other than draws\)"),
        (lambda m: m.update(machine={"cpu": "Intel Xeon", "simd": "avx512f"}), r"another float path"),
        (lambda m: m.update(seeds=[0], seeds_asked=[0]), r"seeds \[0\] are in both tables"),
    ],
)
def test_runs_that_are_not_parts_of_one_run_are_refused(documented, change, message):
    base = part(documented, documented["meta"]["seeds_asked"], "base")
    base["meta"]["machine"] = {"cpu": "AMD EPYC", "simd": "avx2", "torch": "2.13.0+cpu", "aten_kernels": "AVX2"}
    added = copy.deepcopy(base)
    added["meta"].update(seeds=[9], seeds_asked=[9], failed_gates={})
    change(added["meta"])
    with pytest.raises(MergeError, match=message):
        merge(base, added)
