"""``URPOModule``: one model trained as player and referee in one GRPO loop.

``training_step`` orchestrates the phases of a step (:data:`urpo.timing.PHASES`) and nothing else: ``render`` the
prompts, ``rollout`` G completions per prompt, ``reward`` them with the reward callbacks (those that ask the model to
``judge`` generate their judgments there), compute each completion's group-relative ``advantage``, ``update`` the
policy in micro-batches, and log the step's ``metrics``. The step's data is typed in :mod:`urpo.episode`, the update
loop lives in :mod:`urpo.update`, the math in :mod:`urpo.objective` and :mod:`urpo.correction`, the tensor packing in
:mod:`urpo.sequences`. Lower modules never see the module itself: they get plain values or a small typed context
(:class:`~urpo.rewards.base.RewardContext`, :class:`~urpo.update.Ranks`).
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

from urpo import metric_keys as keys
from urpo import metrics as step_metrics
from urpo import progress
from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, RolloutArgs, SamplingArgs, run_seed
from urpo.data.schema import ROW_KINDS, Row
from urpo.dynamic_sampling import select_groups
from urpo.engines.base import RolloutEngine
from urpo.engines.hf_engine import HFGenerateEngine
from urpo.episode import Episode, TrainSequence, train_sequences
from urpo.errors import ConfigError
from urpo.lora import apply_lora, load_quantized_model, reference_policy
from urpo.models import load_model, load_tokenizer
from urpo.objective import group_advantages
from urpo.progress import ProgressGuard
from urpo.prompts import PlayerTemplate, render_chat
from urpo.referee import RefereeTemplate, shuffled_order
from urpo.rewards.base import RewardCallback, RewardContext, score_episodes
from urpo.setup_checks import check_rewards_serve_data, kinds_in_data
from urpo.timing import PhaseTimer
from urpo.update import Ranks, Updater


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
            from urpo.strategies import apply_fsdp, fsdp_settings

            settings = fsdp_settings(self.trainer.strategy)
            self.engine = apply_fsdp(self.policy, self.reference, self.device_mesh, settings, self.engine)
        context = RewardContext(self.engine, self.tokenizer, self.referee, self.sampling, tuple(self.rewards))
        for reward in self.rewards:
            reward.setup(context)

    def _build_engine(self) -> RolloutEngine:
        engine = self.rollout_args.engine
        if engine == "hf":
            return HFGenerateEngine(
                lambda: self.policy,
                self.tokenizer,
                synced_gpus=self._parameters_sharded,
                max_over_ranks=self._max_over_ranks,
            )
        if engine == "vllm":
            from importlib.util import find_spec

            if find_spec("vllm") is None:
                raise ConfigError(
                    "model.rollout.engine vllm needs the vllm extra: pip install 'urpo[vllm]' (docs/rollout.md)"
                )
            from urpo.engines.vllm_engine import VLLMEngine

            return VLLMEngine(
                lambda: self.policy,
                self.tokenizer,
                self.rollout_args.vllm,
                precision=lambda: self.trainer.precision if self._trainer is not None else None,
                rank=lambda: self.global_rank,
                seed=self.seed,
            )
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
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

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
        timer = PhaseTimer()  # the phases, by the names of urpo.timing.PHASES
        episodes = self.rollout(batch, batch_idx, timer)  # render, rollout
        with timer("reward"):
            rewards, reward_metrics = self.score(episodes, timer)  # [N, G]; the referee's generation is 'judge'
        sampled, sampled_rewards = episodes, rewards
        with timer("advantage"):
            episodes, rewards, selection_metrics = self._dynamic_sampling(batch, episodes, rewards)  # [K, G]
            advantages = group_advantages(
                rewards, scale=self.grpo.advantage_scale, leave_one_out=self.grpo.leave_one_out
            )  # [N, G]
        skipped_before = self.skipped_steps
        with timer("update"):
            sequences = self.build_sequences(episodes, rewards, advantages)
            reported = all(e.engine_logprobs is not None for e in episodes)
            update_metrics = self.update(sequences, engine_logprobs=reported)
        with timer("metrics"):
            # Rewards and lengths describe every sampled group (what the policy does), the update the kept ones.
            metrics = step_metrics.step_metrics(sampled, sampled_rewards, advantages, self.tokenizer, self.sampling)
            metrics.update(selection_metrics)
            outcome = progress.outcome(update_metrics, self.skipped_steps - skipped_before, self.grpo.num_iterations)
            self.progress.record(outcome, metrics[keys.REWARD_MISSING_FRAC], [r.name for r in self.rewards])
            metrics.update(reward_metrics)
            metrics.update(update_metrics)
        metrics.update(timer.metrics(completion_tokens=metrics[keys.COMPLETION_TOKENS]))
        metrics[keys.SKIPPED_STEPS] = float(self.skipped_steps)
        metrics[keys.LEARNING_RATE] = float(self.optimizers().param_groups[0]["lr"])
        metrics.update(getattr(self.trainer.datamodule, "counters", None) or {})
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch))
        self.log(
            "reward", metrics[keys.REWARD_MEAN], prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch)
        )
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
        kept = {k: v for k, v in metrics.items() if math.isfinite(v) and not k.startswith(keys.ROWS_PREFIX)}
        finite = {keys.held_out(split, k): v for k, v in kept.items()}
        self.log_dict(finite, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def rollout(self, rows: Sequence[Row], batch_idx: int = 0, timer: PhaseTimer | None = None) -> list[Episode]:
        """Render every row's prompt and sample G completions for all of them in one engine call (the phases
        ``render`` and ``rollout`` of ``timer``).

        When some group shows its completions different prompts (mirrored preference orders), the call asks for
        one sample of each completion's own prompt; for the HF engine that is the very same batch as G samples of
        each prompt, since it repeats every prompt G times itself.
        """
        timer = timer or PhaseTimer()
        rng = random.Random(f"{self.seed}:{self.global_step}:{self.global_rank}:{batch_idx}")
        g = self.grpo.num_generations
        with timer("render"):
            episodes = [self.render(row, rng) for row in rows]
            per_completion = [self._completion_messages(e) for e in episodes]
            shared = all(all(m is msgs[0] for m in msgs) for msgs in per_completion)
            if shared:  # one prompt per group, sampled G times
                texts, n = [render_chat(self.tokenizer, e.messages) for e in episodes], g
            else:  # one prompt per completion
                texts, n = [render_chat(self.tokenizer, m) for msgs in per_completion for m in msgs], 1
        with timer("rollout"):
            out = self.engine.generate(texts, n, self.sampling)
        if shared:
            prompt_ids = [[ids] * g for ids in out.prompt_ids]
        else:
            prompt_ids = [out.prompt_ids[i * g : (i + 1) * g] for i in range(len(episodes))]
        for i, episode in enumerate(episodes):
            group = slice(i * g, (i + 1) * g)
            episode.prompt_ids = prompt_ids[i]  # the prompt each completion answered
            episode.completion_ids = out.completion_ids[group]
            episode.completions = out.texts[group]
            episode.finish_reasons = out.finish_reasons[group]
            # The sampler's own log-probs (vLLM), for the train/inference mismatch; None with the HF engine.
            episode.engine_logprobs = out.logprobs[group] if out.logprobs is not None else None
        return episodes

    def render(self, row: Row, rng: random.Random) -> Episode:
        """The prompt a row is trained on: the player's question, or a referee judging task for preference rows.

        A preference episode records the presentation order of each of its G judgments in ``Episode.orders``,
        following ``grpo.preference_orders``.
        """
        if row.kind != "preference":
            return Episode(row=row, messages=self.player.messages(row))
        order = shuffled_order(len(row.responses), rng)
        g = self.grpo.num_generations
        mirrored = self.grpo.preference_orders == "mirrored"
        orders = [order] * (g - g // 2) + [order[::-1] if mirrored else order] * (g // 2)
        messages = self.referee.messages(row.prompt, row.responses, order)
        return Episode(row=row, messages=messages, orders=orders)

    def prompt_text(self, row: Row) -> str:
        """The chat prompt ``row`` is trained on, as the model reads it; the DataModule measures it (its
        :class:`~urpo.data.datamodule.PromptModel` face)."""
        return render_chat(self.tokenizer, self.render(row, random.Random(0)).messages)

    def _completion_messages(self, episode: Episode) -> list[list[dict[str, str]]]:
        """The chat messages each of the episode's G completions answers (the same object when they share one)."""
        orders = episode.orders
        if orders is None or all(o == orders[0] for o in orders):
            return [episode.messages] * self.grpo.num_generations
        row, cache = episode.row, {tuple(orders[0]): episode.messages}
        for order in orders:
            if tuple(order) not in cache:
                cache[tuple(order)] = self.referee.messages(row.prompt, row.responses, order)
        return [cache[tuple(order)] for order in orders]

    def score(
        self, episodes: Sequence[Episode], timer: PhaseTimer | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewards ``[N, G]`` (NaN: no reward) from every callback serving each episode's kind, and their metrics."""
        rewards, metrics = score_episodes(self.rewards, episodes, self.grpo.num_generations, timer)
        return rewards.to(self.device), metrics  # [N, G]

    def build_sequences(
        self, episodes: Sequence[Episode], rewards: torch.Tensor, advantages: torch.Tensor
    ) -> list[TrainSequence]:
        """One training sequence per completion that got a reward (:func:`~urpo.episode.train_sequences`)."""
        return train_sequences(episodes, rewards, advantages)

    # ---- the update ---------------------------------------------------------------------------------------------

    def update(self, sequences: list[TrainSequence], engine_logprobs: bool = False) -> dict[str, float]:
        """``num_iterations`` optimizer steps over the rollout batch (:class:`~urpo.update.Updater`).

        ``engine_logprobs``: the engine reported log-probs for this rank's rollout (the sequences then carry them).
        """
        updater = Updater(
            self.policy,
            self.grpo,
            self.rollout_args.correction,
            self.sampling,
            self.tokenizer.pad_token_id,
            ranks=self._ranks(),
            backward=self.manual_backward,
            optimizer_step=self._optimizer_step,
            reference=self._reference_model,
        )
        return updater.run(sequences, engine_logprobs)

    def _ranks(self) -> Ranks:
        """This rank's device and collectives, for the update plan."""
        if self._trainer is None:
            return Ranks(self.device)
        return Ranks(
            self.device,
            sum=lambda local: self.trainer.strategy.reduce(local, reduce_op="sum"),
            max=self._max_over_ranks,
            world_size=self.trainer.world_size,
        )

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
            export_policy(self.policy, self.tokenizer, target, rank=self.global_rank)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


__all__ = ["ROW_KINDS", "URPOModule", "default_optimizer"]
