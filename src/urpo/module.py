"""``URPOModule``: one model trained as player and referee in one GRPO loop.

``training_step`` orchestrates the phases of a step and nothing else: render prompts,
roll out G completions per prompt, let reward callbacks score them (the self-judge generates its judgments there),
compute group-relative advantages, and update the policy in micro-batches. The math lives in
:mod:`urpo.objective`, the tensor packing in :mod:`urpo.sequences`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from urpo import metrics as step_metrics
from urpo import progress
from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, RolloutArgs, SamplingArgs, run_seed
from urpo.data.schema import ROW_KINDS, Row
from urpo.dynamic_sampling import select_groups
from urpo.engines import correction
from urpo.errors import ConfigError
from urpo.lora import apply_lora, load_quantized_model, reference_policy
from urpo.models import load_model, load_tokenizer
from urpo.objective import group_advantages, policy_loss
from urpo.progress import ProgressGuard
from urpo.prompts import PlayerTemplate, render_chat
from urpo.referee import RefereeTemplate, shuffled_order
from urpo.rewards.base import Episode, RewardCallback, checked_result, combine_rewards
from urpo.rollout import HFGenerateEngine, RolloutEngine
from urpo.sequences import TrainSequence, completion_logits, token_logprobs
from urpo.setup_checks import check_rewards_serve_data, kinds_in_data
from urpo.timing import PhaseTimer
from urpo.update import UpdatePlan, entropy_of


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW at lr 1e-6, a common GRPO default for full fine-tuning of 1B-10B models."""
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


class URPOModule(L.LightningModule):
    """Unified Reward & Policy Optimization (arXiv 2507.17515) as a LightningModule.

    Every argument is one group of YAML keys under ``model:``, defined in :mod:`urpo.args` (the map of all of them).

    Args:
        policy: the causal LM to train (hub id, local folder, GGUF file), and what of it trains: all weights, LoRA
            adapters, or adapters on a quantized base (QLoRA); gradient checkpointing.
        rewards: reward callbacks; every row kind in the data needs at least one. Default: ``[MathVerifier()]``.
        grpo: the objective and update settings.
        sampling: how completions (and the referee's judgments) are sampled.
        rollout: the rollout engine ('hf' or 'vllm'), its options, and the train/inference mismatch correction.
        player: the player's prompt templates.
        referee: the referee's judging template, shared by preference rows and self-judging.
        optimizer: builds the optimizer from the trainable parameters (``class_path`` in YAML).
        lr_scheduler: optional learning-rate schedule, stepped after every optimizer step.
        logging: sample tables, model export, the referee's parse-failure warning.

    Random streams (referee presentation orders, the vLLM engine's sampling) derive from the run's seed,
    ``seed_everything`` (:func:`urpo.args.run_seed`), read when the module is built.
    """

    def __init__(
        self,
        policy: PolicyArgs,
        rewards: list[RewardCallback] | None = None,
        grpo: GRPOArgs = GRPOArgs(),
        sampling: SamplingArgs = SamplingArgs(),
        rollout: RolloutArgs = RolloutArgs(),
        player: PlayerTemplate = PlayerTemplate(),
        referee: RefereeTemplate = RefereeTemplate(),
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        logging: LoggingArgs = LoggingArgs(),
    ) -> None:
        super().__init__()
        if rewards is None:
            from urpo.rewards.verifier import MathVerifier

            rewards = [MathVerifier()]
        self.policy_args, self.grpo, self.sampling = policy, grpo, sampling
        self.rollout_args, self.player, self.referee, self.logging_args = rollout, player, referee, logging
        self.rewards = list(rewards)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.seed = run_seed()
        self.tokenizer = load_tokenizer(policy)  # cheap, and the DataModule needs it to measure prompts
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.engine: RolloutEngine | None = None
        self.skipped_steps = 0
        self.progress = ProgressGuard(grpo.max_stalled_steps)  # a run never samples forever without stepping
        self.automatic_optimization = False  # several optimizer steps per batch, and non-finite steps are skipped
        self._check_rewards()

    # ---- setup -------------------------------------------------------------------------------------------------

    def _check_rewards(self) -> None:
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward callbacks need distinct names (set name=...), got {names}")

    def setup(self, stage: str) -> None:
        # Lightning sets the data up before the model loads: a row kind no reward serves fails here, not in step 1.
        check_rewards_serve_data(self.rewards, kinds_in_data(self.trainer.datamodule, stage))

    def configure_model(self) -> None:
        """Load the policy (and the reference policy when ``beta > 0``); Lightning calls this under the strategy.

        With LoRA the reference is the policy with its adapters switched off, not a copy. Under a
        ``ModelParallelStrategy`` (``self.device_mesh`` is set) both are sharded with FSDP2 (:mod:`urpo.strategies`).
        """
        if self.policy is not None:
            return
        args = self.policy_args
        if args.quantization is None:
            policy = load_model(args)
        else:
            # Quantized weights are made on the device they will live on, so it must be known at load time.
            device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
            policy = load_quantized_model(args, args.quantization, device, args.gradient_checkpointing)
        policy.train()  # from_pretrained returns eval mode; the rollout engine switches modes itself
        if args.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.lora is not None:
            policy = apply_lora(policy, args.lora)
        if self.grpo.beta > 0 and args.lora is None:
            self.reference = _frozen_copy(policy)
        self.policy = policy
        self.engine = self._build_engine()
        if self.device_mesh is not None:
            from urpo.strategies import apply_fsdp

            apply_fsdp(self)
        for reward in self.rewards:
            reward.setup(self)

    def _build_engine(self) -> RolloutEngine:
        engine = self.rollout_args.engine
        if engine == "hf":
            return HFGenerateEngine(
                lambda: self.policy, self.tokenizer, synced_gpus=self._parameters_sharded, max_over_ranks=self._max_over_ranks
            )
        if engine == "vllm":
            from importlib.util import find_spec

            if find_spec("vllm") is None:
                raise ConfigError("model.rollout.engine vllm needs the vllm extra: pip install 'urpo[vllm]' (docs/rollout.md)")
            from urpo.engines.vllm_engine import VLLMEngine

            return VLLMEngine(
                lambda: self.policy, self.tokenizer, self.rollout_args.vllm,
                precision=lambda: self.trainer.precision if self._trainer is not None else None,
                rank=lambda: self.global_rank, seed=self.seed,
            )  # fmt: skip
        raise ConfigError(f"model.rollout.engine {engine!r} is not available in this build (install the extra)")

    def _max_over_ranks(self, value: int) -> int:
        return int(self.all_gather(torch.tensor(value, device=self.device)).max().item())

    def _parameters_sharded(self) -> bool:
        return self.trainer.world_size > 1 if self._trainer is not None else False

    def configure_optimizers(self) -> Any:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def configure_callbacks(self) -> list[L.Callback]:
        """Callbacks every Trainer of this module gets: the referee parse-failure watch (``logging`` settings)."""
        from urpo.referee_watch import ParseFailureWatch

        args = self.logging_args
        return [ParseFailureWatch(args.parse_warning_after_steps, args.parse_warning_share)]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # a batch is a list of rows (text); tensors are made on the right device inside the step

    # ---- one training step -------------------------------------------------------------------------------------

    def training_step(self, batch: Sequence[Row], batch_idx: int) -> None:
        step = self.global_step  # the step metrics.csv files this batch under (the optimizer step raises it)
        timer = PhaseTimer()
        with timer("generate"):
            episodes = self.rollout(batch, batch_idx)
        with timer("score"):
            rewards, reward_metrics = self.score(episodes, timer)  # [N, G]
        sampled, sampled_rewards = episodes, rewards
        episodes, rewards, selection_metrics = self._dynamic_sampling(batch, episodes, rewards)  # [K, G]
        advantages = group_advantages(
            rewards, scale=self.grpo.advantage_scale, leave_one_out=self.grpo.leave_one_out
        )  # [N, G]
        sequences = self.build_sequences(episodes, rewards, advantages)
        skipped_before = self.skipped_steps
        with timer("update"):
            update_metrics = self.update(sequences, correction.behaviour_rows(episodes, sequences))
        # Rewards and lengths describe every sampled group (what the policy does), the update the kept ones.
        metrics = step_metrics.step_metrics(sampled, sampled_rewards, advantages, self.tokenizer, self.sampling)
        metrics.update(selection_metrics)
        outcome = progress.outcome(update_metrics, self.skipped_steps - skipped_before, self.grpo.num_iterations)
        self.progress.record(outcome, metrics["reward/missing_frac"], [r.name for r in self.rewards])
        metrics.update(reward_metrics)
        metrics.update(update_metrics)
        metrics.update(timer.metrics(completion_tokens=metrics["completion/tokens"]))
        metrics["train/skipped_steps"] = float(self.skipped_steps)
        metrics["train/lr"] = float(self.optimizers().param_groups[0]["lr"])
        metrics.update(getattr(self.trainer.datamodule, "counters", None) or {})
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch))
        self.log("reward", metrics["reward/mean"], prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch))
        self._maybe_write_samples(episodes, rewards, advantages, step)

    def _dynamic_sampling(
        self, batch: Sequence[Row], episodes: list[Episode], rewards: torch.Tensor
    ) -> tuple[list[Episode], torch.Tensor, dict[str, float]]:
        """The groups to train on: those DAPO's dynamic sampling keeps when the batch was over-sampled (it then
        carries the rows of each kind to keep, see :mod:`urpo.dynamic_sampling`), else all of them."""
        quotas = getattr(batch, "quotas", None)
        if not quotas:
            return episodes, rewards, {}
        keep, metrics = select_groups([e.row.kind for e in episodes], rewards, quotas)
        return [episodes[i] for i in keep], rewards[keep], metrics  # rewards: [K, G]

    def validation_step(self, batch: Sequence[Row], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Sequence[Row], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: Sequence[Row], batch_idx: int, split: str) -> None:
        """Rewards of sampled completions on held-out rows, per kind, averaged over the epoch."""
        episodes = self.rollout(batch, batch_idx)
        rewards, callback_metrics = self.score(episodes)
        metrics = step_metrics.reward_metrics(episodes, rewards)
        metrics.update(callback_metrics)
        finite = {f"{split}/{k}": v for k, v in metrics.items() if math.isfinite(v) and not k.startswith("rows/")}
        self.log_dict(finite, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def rollout(self, rows: Sequence[Row], batch_idx: int = 0) -> list[Episode]:
        """Render every row's prompt and sample G completions for all of them in one engine call.

        When some group shows its completions different prompts (mirrored preference orders), the call asks for
        one sample of each completion's own prompt; for the HF engine that is the very same batch as G samples of
        each prompt, since it repeats every prompt G times itself.
        """
        rng = random.Random(f"{self.seed}:{self.global_step}:{self.global_rank}:{batch_idx}")
        g = self.grpo.num_generations
        episodes = [self.render(row, rng) for row in rows]
        per_completion = [self._completion_messages(e) for e in episodes]
        shared = all(all(m is msgs[0] for m in msgs) for msgs in per_completion)
        if shared:
            out = self.engine.generate([render_chat(self.tokenizer, e.messages) for e in episodes], g, self.sampling)
            prompt_ids = [[ids] * g for ids in out.prompt_ids]
        else:
            texts = [render_chat(self.tokenizer, m) for msgs in per_completion for m in msgs]
            out = self.engine.generate(texts, 1, self.sampling)
            prompt_ids = [out.prompt_ids[i * g : (i + 1) * g] for i in range(len(episodes))]
        for i, episode in enumerate(episodes):
            episode.meta["prompt_ids"] = prompt_ids[i][0]
            episode.meta["completion_prompt_ids"] = prompt_ids[i]  # the prompt each completion answered
            episode.meta["completion_ids"] = out.completion_ids[i * g : (i + 1) * g]
            episode.completions = out.texts[i * g : (i + 1) * g]
            episode.finish_reasons = out.finish_reasons[i * g : (i + 1) * g]
            # The sampler's own log-probs (vLLM), for the train/inference mismatch; None with the HF engine.
            episode.meta["completion_logprobs"] = out.logprobs[i * g : (i + 1) * g] if out.logprobs is not None else None
        return episodes

    def render(self, row: Row, rng: random.Random) -> Episode:
        """The prompt a row is trained on: the player's question, or a referee judging task for preference rows.

        A preference episode records the presentation order of each of its G judgments in ``meta["orders"]``
        (``meta["order"]`` is the first), following ``grpo.preference_orders``.
        """
        if row.kind != "preference":
            return Episode(row=row, messages=self.player.messages(row))
        order = shuffled_order(len(row.responses), rng)
        g = self.grpo.num_generations
        mirrored = self.grpo.preference_orders == "mirrored"
        orders = [order] * (g - g // 2) + [order[::-1] if mirrored else order] * (g // 2)
        messages = self.referee.messages(row.prompt, row.responses, order)
        return Episode(row=row, messages=messages, meta={"order": order, "orders": orders})

    def _completion_messages(self, episode: Episode) -> list[list[dict[str, str]]]:
        """The chat messages each of the episode's G completions answers (the same object when they share one)."""
        orders = episode.meta.get("orders")
        if orders is None or all(o == orders[0] for o in orders):
            return [episode.messages] * self.grpo.num_generations
        row, cache = episode.row, {tuple(orders[0]): episode.messages}
        for order in orders:
            if tuple(order) not in cache:
                cache[tuple(order)] = self.referee.messages(row.prompt, row.responses, order)
        return [cache[tuple(order)] for order in orders]

    def score(self, episodes: Sequence[Episode], timer: PhaseTimer | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewards ``[N, G]`` (NaN: no reward) from every callback serving each episode's kind, and their metrics."""
        timer = timer or PhaseTimer()
        g = self.grpo.num_generations
        parts: dict[int, list[tuple[float, torch.Tensor]]] = {i: [] for i in range(len(episodes))}
        metrics: dict[str, float] = {}
        for reward in self.rewards:
            chosen = [i for i, e in enumerate(episodes) if e.row.kind in reward.kinds]
            if not chosen:
                continue
            served = [episodes[i] for i in chosen]
            with timer(f"reward_{reward.name}"):
                result = checked_result(reward, reward.score(served), served, g)
            for row_pos, i in enumerate(chosen):
                parts[i].append((reward.weight, result.rewards[row_pos : row_pos + 1].float()))
            metrics.update({f"reward/{reward.name}/{k}": v for k, v in result.metrics.items()})
        missing = sorted({episodes[i].row.kind for i, p in parts.items() if not p})
        if missing:
            raise ConfigError(f"no reward callback serves row kind(s) {missing}; add one to model.rewards")
        rows = [combine_rewards(parts[i]) for i in range(len(episodes))]
        return torch.cat(rows, dim=0).to(self.device), metrics  # [N, G]

    def build_sequences(
        self, episodes: Sequence[Episode], rewards: torch.Tensor, advantages: torch.Tensor
    ) -> list[TrainSequence]:
        """One training sequence per completion that got a reward; unrewarded ones are left out of the loss."""
        sequences = []
        for i, episode in enumerate(episodes):
            shared = [episode.meta.get("prompt_ids")] * len(episode.meta["completion_ids"])
            prompts = episode.meta.get("completion_prompt_ids") or shared
            for j, completion_ids in enumerate(episode.meta["completion_ids"]):
                if math.isnan(rewards[i, j].item()) or not completion_ids:
                    continue
                sequences.append(TrainSequence(prompts[j], completion_ids, advantages[i, j].item(), i, j))
        return sequences

    # ---- the update ---------------------------------------------------------------------------------------------

    def update(self, sequences: list[TrainSequence], behaviour: list[list[float]] | None = None) -> dict[str, float]:
        """``num_iterations`` optimizer steps over the rollout batch, each accumulated over micro-batches.

        ``behaviour`` holds the engine's log-probs of each sequence's tokens (None: the engine reports none).
        """
        trained, behaviour = self._sequences_with_gradient(sequences, behaviour)
        plan = UpdatePlan.build(self, trained, counted=sequences)
        if plan.num_sequences == 0:
            return {"train/empty_updates": 1.0}  # every completion of the step lacked a reward, on every rank
        engine_logps = correction.pack_for_plan(plan, trained, behaviour, self.grpo.max_tokens_per_micro_batch)
        if engine_logps is not None and self.rollout_args.correction.old_logprobs == "engine":
            old_logps = engine_logps
        else:
            old_logps = plan.logprobs(self, self.policy) if self.grpo.num_iterations > 1 else None
        ref_logps = None
        if self.grpo.beta > 0:
            with self._reference_model() as reference:
                ref_logps = plan.logprobs(self, reference)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: padding micro-batches report no mismatch metrics
        for _ in range(self.grpo.num_iterations):
            for index in range(plan.num_micro_batches):
                stats = self._micro_step(plan, index, old_logps, ref_logps, engine_logps)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
            if plan.num_micro_batches == 0:
                self._zero_gradients()  # nothing to backpropagate: step on exact zeros, as a full update would
            totals["train/grad_norm"] = self._optimizer_step()
        metrics = {k: (v if k == "train/grad_norm" else v / counts[k]) for k, v in totals.items()}
        if plan.num_micro_batches == 0:  # every completion skipped: the loss was exactly zero (per-token stats: none)
            metrics.update({"train/loss": 0.0, "train/pg_loss": 0.0})
        metrics["train/zero_advantage_skipped"] = float(len(sequences) - len(trained))
        return metrics

    def _sequences_with_gradient(
        self, sequences: list[TrainSequence], behaviour: list[list[float]] | None
    ) -> tuple[list[TrainSequence], list[list[float]] | None]:
        """The sequences worth a forward/backward (and their engine log-probs): see ``GRPOArgs.skip_zero_advantage``.

        Without a KL term every loss term of a completion is its advantage times a (clipped, maybe importance-
        weighted) ratio, so an advantage of exactly 0 gives an exactly zero gradient.
        """
        if not self.grpo.skip_zero_advantage or self.grpo.beta > 0:
            return sequences, behaviour
        keep = [i for i, seq in enumerate(sequences) if seq.advantage != 0.0]
        return [sequences[i] for i in keep], (None if behaviour is None else [behaviour[i] for i in keep])

    def _zero_gradients(self) -> None:
        """Give every trainable parameter a zero gradient, so the optimizer step (momentum, weight decay) runs as
        it would after a backward pass whose gradients were all zero."""
        for param in self.policy.parameters():
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)

    def _micro_step(
        self, plan: UpdatePlan, index: int, old_logps: list[torch.Tensor] | None, ref_logps: list[torch.Tensor] | None,
        engine_logps: list[torch.Tensor] | None = None,
    ) -> dict[str, float]:  # fmt: skip
        batch, weight = plan.micro_batch(index)
        logits = completion_logits(self.policy, batch, self.sampling.temperature)  # [B, C, V]
        logp = token_logprobs(logits, batch.completion_ids)  # [B, C]
        old = old_logps[index] if old_logps is not None else logp.detach()  # [B, C]
        ref = ref_logps[index] if ref_logps is not None else None  # [B, C]
        engine = engine_logps[index] if engine_logps is not None and weight > 0 else None  # [B, C]
        # Importance-weights the gradient for the engine's sampling and measures the mismatch; no-op without engine.
        loss_logp, mismatch = correction.correct(logp, old, engine, batch.completion_mask, self.rollout_args.correction)
        out = policy_loss(
            loss_logp, old, batch.advantages, batch.completion_mask,
            eps_low=self.grpo.epsilon_low, eps_high=self.grpo.epsilon_high, dual_clip=self.grpo.dual_clip,
            importance=self.grpo.importance, ref_logp=ref, beta=self.grpo.beta, kl_estimator=self.grpo.kl_estimator,
            aggregation=self.grpo.loss_aggregation, num_tokens=plan.num_tokens, num_sequences=plan.num_sequences,
            max_completion_length=self.sampling.max_new_tokens,
        )
        # DDP and FSDP average gradients over ranks; the loss is normalised by global counts, so undo the average.
        self.manual_backward(out.loss * weight * self.trainer.world_size)
        stats = {
            "train/loss": out.loss.item() * weight, "train/pg_loss": out.pg_loss.item() * weight,
            "train/clip_low_frac": out.clip_low_frac.item(), "train/clip_high_frac": out.clip_high_frac.item(),
            "train/dual_clip_frac": out.dual_clip_frac.item(), "train/ratio_mean": out.ratio_mean.item(),
            "train/entropy": entropy_of(logits, batch.completion_mask),
        }
        if out.kl is not None:
            stats["train/kl"] = out.kl.item() * weight
        stats.update(mismatch)
        return stats

    def _optimizer_step(self) -> float:
        """Clip, then step unless the gradient is not finite (then the step is skipped and counted)."""
        optimizer = self.optimizers()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.grpo.max_grad_norm if self.grpo.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(norm):
            optimizer.zero_grad()
            self.skipped_steps += 1
            return norm
        optimizer.step()
        optimizer.zero_grad()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.engine.sync_weights()
        return norm

    def _reference_model(self) -> AbstractContextManager[torch.nn.Module]:
        """The reference policy, for a ``with`` block: the frozen copy, or the LoRA policy with adapters off."""
        return reference_policy(self.policy, self.reference)

    # ---- checkpoints, samples, export ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["urpo"] = {
            "rewards": {r.name: r.state_dict() for r in self.rewards},
            "skipped_steps": self.skipped_steps,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            # An engine with a sampling stream of its own (vLLM) saves it too; HF generate uses the global one above.
            "engine": self.engine.state_dict() if hasattr(self.engine, "state_dict") else {},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("urpo", {})
        for reward in self.rewards:
            reward.load_state_dict(state.get("rewards", {}).get(reward.name, {}))
        self.skipped_steps = state.get("skipped_steps", 0)
        if state.get("torch_rng") is not None:
            # Sampling draws from the global RNG: restoring it makes a resumed run sample what a straight run would.
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state.get("engine") and hasattr(self.engine, "load_state_dict"):
            self.engine.load_state_dict(state["engine"])

    def _maybe_write_samples(
        self, episodes: Sequence[Episode], rewards: torch.Tensor, advantages: torch.Tensor, step: int
    ) -> None:
        every = self.logging_args.samples_every_n_steps
        if every and self.global_rank == 0 and step % every == 0:
            per_kind = self.logging_args.samples_per_kind
            step_metrics.write_samples(self.trainer, episodes, rewards, advantages, per_kind, step)

    def on_fit_end(self) -> None:
        from urpo.export import export_policy, resolve_export_dir

        target = resolve_export_dir(self.trainer, self.logging_args.export_dir)
        if target is not None:
            export_policy(self, target)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


__all__ = ["ROW_KINDS", "URPOModule", "default_optimizer"]
