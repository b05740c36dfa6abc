"""Per-step metrics of a rollout batch, and the sample tables written next to the metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from urpo import metric_keys as keys
from urpo.data.schema import ROW_KINDS
from urpo.objective import zero_variance

if TYPE_CHECKING:
    import lightning as L

    from urpo.args import SamplingArgs
    from urpo.episode import Episode


def _nan_stats(values: torch.Tensor) -> tuple[float, float]:
    valid = values[~torch.isnan(values)]  # [K]
    if valid.numel() == 0:
        return float("nan"), float("nan")
    return valid.mean().item(), (valid.std(unbiased=False).item() if valid.numel() > 1 else 0.0)


def reward_metrics(episodes: Sequence[Episode], rewards: torch.Tensor) -> dict[str, float]:
    """Reward mean/std overall and per kind, the share of unrewarded completions and of zero-variance groups."""
    rewards = rewards.detach().float().cpu()  # [N, G]
    mean, std = _nan_stats(rewards)
    out = {
        keys.REWARD_MEAN: mean,
        keys.REWARD_STD: std,
        keys.REWARD_MISSING_FRAC: torch.isnan(rewards).float().mean().item(),
    }
    for kind in ROW_KINDS:
        rows = [i for i, e in enumerate(episodes) if e.row.kind == kind]
        if rows:
            kind_rewards = rewards[rows]  # [n_kind, G]
            out[keys.kind_reward_mean(kind)], out[keys.kind_reward_std(kind)] = _nan_stats(kind_rewards)
            out[keys.kind_rows(kind)] = float(len(rows))
            # Where GRPO's signal is lost: a group whose rewards are all equal has zero advantage everywhere, and a
            # small within-group spread means small advantages once the group std is divided out.
            out[keys.kind_zero_variance_frac(kind)] = _zero_variance_frac(kind_rewards)
            out[keys.kind_group_spread(kind)] = _group_spread(kind_rewards)
    out[keys.ZERO_VARIANCE_FRAC] = _zero_variance_frac(rewards)
    return out


def _zero_variance_frac(rewards: torch.Tensor) -> float:
    return sum(zero_variance(r) for r in rewards) / max(len(rewards), 1)  # rewards: [n, G]


def _group_spread(rewards: torch.Tensor) -> float:
    """Mean over groups of the within-group (population) std of the valid rewards; NaN when no group has two."""
    spreads = []
    for group in rewards:  # [G]
        valid = group[~torch.isnan(group)]  # [K]
        if valid.numel() >= 2:
            spreads.append(valid.std(unbiased=False).item())
    return sum(spreads) / len(spreads) if spreads else float("nan")


def completion_metrics(episodes: Sequence[Episode], sampling: SamplingArgs) -> dict[str, float]:
    """Completion lengths in tokens (mean, max, total) and the share cut off by ``max_new_tokens``."""
    lengths = [len(ids) for e in episodes for ids in e.completion_ids]
    reasons = [r for e in episodes for r in e.finish_reasons]
    total = float(sum(lengths))
    return {
        keys.COMPLETION_LENGTH_MEAN: total / max(len(lengths), 1),
        keys.COMPLETION_LENGTH_MAX: float(max(lengths, default=0)),
        keys.COMPLETION_TRUNCATED_FRAC: reasons.count("length") / max(len(reasons), 1),
        keys.COMPLETION_TOKENS: total,
        keys.COMPLETION_MAX_NEW_TOKENS: float(sampling.max_new_tokens),
    }


def step_metrics(
    episodes: Sequence[Episode], rewards: torch.Tensor, advantages: torch.Tensor, tokenizer, sampling
) -> dict[str, float]:
    """Every rollout-side metric of a step."""
    out = reward_metrics(episodes, rewards)
    out.update(completion_metrics(episodes, sampling))
    out[keys.ADVANTAGE_ABS_MEAN] = advantages.abs().mean().item()
    return out


def write_samples(
    trainer: L.Trainer,
    episodes: Sequence[Episode],
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    per_kind: int,
    step: int,
) -> Path:
    """Append a few rows of each kind, with every completion, its reward and advantage, to ``samples.jsonl``."""
    path = Path(trainer.log_dir or trainer.default_root_dir) / "samples.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    taken: dict[str, int] = {}
    with path.open("a", encoding="utf-8") as sink:
        for i, episode in enumerate(episodes):
            kind = episode.row.kind
            if taken.get(kind, 0) >= per_kind:
                continue
            taken[kind] = taken.get(kind, 0) + 1
            record = {
                "step": step,
                "kind": kind,
                "source": episode.row.source,
                "index": episode.row.index,
                "prompt": episode.messages[-1]["content"],
                "completions": [
                    {
                        "text": text,
                        "reward": _jsonable(rewards[i, j].item()),
                        "advantage": advantages[i, j].item(),
                        "finish": episode.finish_reasons[j],
                    }
                    for j, text in enumerate(episode.completions)
                ],
            }
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _jsonable(value: float) -> float | None:
    return None if value != value else value  # NaN is not valid JSON
