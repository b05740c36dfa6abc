"""``urpo data --config CONFIG``: check a data mixture before spending GPU hours on it.

Prints, for the ``data`` section of a training config: the rows read per source and kind, the rows of each kind in
every batch, bad records skipped, prompts dropped or truncated by ``max_prompt_tokens``, and a few rendered prompts
exactly as the model will see them. Only the tokenizer is loaded, never the model weights.
"""

from __future__ import annotations

import sys
from collections import Counter

from urpo.data.mixture import MemoryCursor
from urpo.errors import ConfigError
from urpo.setup_checks import check_rewards_serve_data, kinds_in_data


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``urpo data``; takes the same ``--config`` and overrides as ``urpo fit``."""
    from urpo.cli import URPOCLI
    from urpo.data.datamodule import URPODataModule
    from urpo.module import URPOModule

    argv = list(sys.argv[1:] if argv is None else argv)
    batches = _pop_int(argv, "--batches", 4)
    examples = _pop_int(argv, "--examples", 1)
    cli = URPOCLI(URPOModule, URPODataModule, run=False, args=argv, save_config_callback=None)
    print(report(cli.datamodule, cli.model, cli.trainer, batches=batches, examples=examples))


def _pop_int(argv: list[str], flag: str, default: int) -> int:
    if flag not in argv:
        return default
    position = argv.index(flag)
    text = argv[position + 1] if position + 1 < len(argv) else None
    if text is None or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"urpo data {flag} needs a positive whole number, e.g. {flag} {default}; got {text!r}")
    del argv[position : position + 2]
    return int(text)


def report(datamodule, module, trainer, batches: int = 4, examples: int = 1) -> str:
    """The inspection text for a DataModule wired to its module (tokenizer and templates) and trainer."""
    trainer.strategy.connect(module)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    mixer = datamodule.mixer
    lines = ["sources:"]
    for kind, cursors in mixer.cursors.items():
        for weight, cursor in cursors:
            size = f"{len(cursor.rows)} rows" if isinstance(cursor, MemoryCursor) else "streamed"
            lines.append(f"  {kind:<11} weight {weight:<5g} {size}")
    lines.append(f"rows per batch: {dict(mixer.quotas)} (batch_size {datamodule.batch_size})")
    try:  # the check `urpo fit` makes before loading the model; an inspection shows it and goes on
        check_rewards_serve_data(module.rewards, kinds_in_data(datamodule, "fit"))
        served = [f"{reward.name} ({'/'.join(reward.kinds)})" for reward in module.rewards]
        lines.append(f"rewards: {', '.join(served)}")
    except ConfigError as error:
        lines.append(f"rewards: PROBLEM: {error}")
    drawn = [mixer.next_batch() for _ in range(batches)]
    per_source = Counter((row.kind, row.source) for batch in drawn for row in batch)
    lines.append(f"first {batches} batches drew:")
    lines += [f"  {kind:<11} {source}: {count}" for (kind, source), count in sorted(per_source.items())]
    lines.append(f"bad records: {datamodule.skips.summary()}")
    counters = ", ".join(f"{k}={int(v)}" for k, v in sorted(datamodule.counters.items())) or "none"
    lines.append(f"max_prompt_tokens={datamodule.max_prompt_tokens} ({datamodule.prompt_overflow}): {counters}")
    seen: Counter = Counter()
    for row in (row for batch in drawn for row in batch):
        if seen[row.kind] >= examples:
            continue
        seen[row.kind] += 1
        text = module.prompt_text(row)
        tokens = len(module.tokenizer(text, add_special_tokens=False)["input_ids"])
        lines += [f"--- {row.kind} prompt ({row.source}, row {row.index}, {tokens} tokens) ---", text]
    return "\n".join(lines)
