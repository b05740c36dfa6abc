"""tools.evidence.compare: two runs' machines, seeds, scores and claim verdicts side by side, from results.json."""

import copy
import json

import pytest

from tests.evidence_documents import DOCUMENTED, documented_with_a_dropped_seed
from tools.evidence.compare import claims, main
from tools.evidence.names import CLAIMS, seed_of


@pytest.fixture
def documented():
    return documented_with_a_dropped_seed()


def test_a_run_against_itself_agrees_on_every_claim_it_recorded(documented, tmp_path):
    text = main([DOCUMENTED, "docs/evidence", "--names", "here", "again", "--out", str(tmp_path / "same.md")])
    recorded = [k for k in CLAIMS if documented["summary"]["comparisons"].get(k, {}).get("n")]
    assert len(recorded) >= 8
    n = len(recorded)
    assert f"The verdicts agree on {n} of {n} claims; the means point the same way on {n}." in text
    assert (tmp_path / "same.md").read_text() == text
    urpo_open = documented["summary"]["urpo"]["open_accuracy"]
    row = f"| URPO (self-judge) | Open-style accuracy | {urpo_open['mean'] * 100:.1f} ± {urpo_open['std'] * 100:.1f} |"
    assert row in text


def test_a_claim_that_flips_is_named_and_counted_and_the_machines_and_dropped_seeds_are_shown(documented, tmp_path):
    documented["meta"].pop("machine", None)  # as in a run from before machines were recorded
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "results.json").write_text(json.dumps(documented))
    other = copy.deepcopy(documented)
    other["meta"]["machine"] = {
        "cpu": "Intel Xeon",
        "simd": "avx2, avx512f",
        "cores": 8,
        "torch": "2.13.0+cpu",
        "aten_kernels": "AVX512",
        "overrides": {},
    }
    other["meta"]["seeds"], other["meta"]["failed_gates"] = [0, 1], {"warm_start/2": "missed"}
    flipped = other["summary"]["comparisons"]["urpo_minus_baseline_open"]
    flipped["significant"], flipped["positive"] = not flipped["significant"], 1
    reversed_ = other["summary"]["comparisons"]["urpo_open_gain"]  # not significant either way, but the other sign
    reversed_["mean"] = -reversed_["mean"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(other))

    rows = {row["claim"]: row for row in claims(documented, other)}
    assert not rows["urpo_minus_baseline_open"]["agree"]
    assert all(row["agree"] for key, row in rows.items() if key != "urpo_minus_baseline_open")
    assert rows["urpo_minus_baseline_open"]["same_sign"]
    text = main([str(tmp_path / "before"), str(tmp_path / "other"), "--names", "EPYC", "Xeon"])
    assert not rows["urpo_open_gain"]["same_sign"] and rows["urpo_open_gain"]["agree"]
    assert sum(row["same_sign"] for row in rows.values()) == len(rows) - 1
    n = len(rows)
    assert f"The verdicts agree on {n - 1} of {n} claims; the means point the same way on {n - 1}." in text
    flipped_line = next(line for line in text.splitlines() if line.startswith("| URPO minus frozen-referee baseline"))
    assert flipped_line.endswith("| **no** | yes |")
    gain_line = next(line for line in text.splitlines() if line.startswith("| URPO's open accuracy gain"))
    assert gain_line.endswith("| yes | **no** |")
    assert "- **Xeon**: Intel Xeon (avx2, avx512f), 8 cores; torch 2.13.0+cpu, ATen kernels AVX512." in text
    assert (
        "Seeds asked: [0, 1, 2, 3, 4, 5, 6, 7]; kept: [0, 1]; warm starts that missed the gate: warm_start/2." in text
    )
    assert "- **EPYC**: not recorded (its results.json predates tools.machine)." in text


def test_a_folder_without_results_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/results.json: no results.json here"):
        main([str(tmp_path), DOCUMENTED])


def test_seeds_compare_over_a_subset_summarized_again_from_the_runs(documented, tmp_path):
    """A run that asked seeds 0-4 against the documented 0-7: the documented one over its kept seeds among 0-4."""
    (tmp_path / "results.json").write_text(json.dumps(documented))
    kept = [s for s in documented["meta"]["seeds"] if s <= 4]
    text = main([str(tmp_path), str(tmp_path), "--names", "all", "first five", "--seeds", "0", "1", "2", "3", "4"])
    assert f"Seeds asked: [0, 1, 2, 3, 4]; kept: {kept};" in text
    dropped = ", ".join(sorted(k for k in documented["meta"]["failed_gates"] if seed_of(k) <= 4))
    assert f"warm starts that missed the gate: {dropped or 'none'}." in text
    open_final = [documented["runs"][f"urpo/{s}"]["final"]["open_accuracy"] for s in kept]
    mean = 100 * sum(open_final) / len(open_final)
    assert f"| URPO (self-judge) | Open-style accuracy | {mean:.1f} ± " in text
    failed = min(seed_of(name) for name in documented["meta"]["failed_gates"])
    with pytest.raises(ValueError, match=rf"none of seeds \[{failed}\] passed the gate"):
        main([str(tmp_path), str(tmp_path), "--seeds", str(failed)])
