"""Tests of urpo.objective against values worked out by hand (derivations in the comments)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from urpo.objective import (
    aggregate,
    entropy_from_logits,
    group_advantages,
    importance_ratio,
    kl_penalty,
    masked_mean,
    policy_loss,
    sequence_log_ratio,
)

NAN = float("nan")
F64 = torch.float64


def t(data, dtype=F64) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype)


# ----------------------------------------------------------------------------------------------- group advantages


def test_group_scale_uses_unbiased_group_std():
    # Group [1, 3]: mean 2, unbiased var ((-1)^2 + 1^2) / (2 - 1) = 2, std sqrt(2) -> [-1, 1] / sqrt(2).
    # Group [0, 4]: mean 2, var (4 + 4) / 1 = 8, std 2 sqrt(2) -> [-2, 2] / (2 sqrt(2)) = [-1, 1] / sqrt(2).
    adv = group_advantages(t([[1.0, 3.0], [0.0, 4.0]]), scale="group", eps=0.0)
    r = 1 / math.sqrt(2)
    assert_close(adv, t([[-r, r], [-r, r]]))


def test_group_scale_default_eps():
    # [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + 1e-4).
    adv = group_advantages(t([[1.0, 2.0, 3.0]]))
    assert_close(adv, t([[-1.0, 0.0, 1.0]]) / (1 + 1e-4))


def test_batch_scale_uses_std_of_all_rewards():
    # All rewards 1, 3, 0, 4: mean 2, squared deviations 1 + 1 + 4 + 4 = 10, unbiased var 10 / 3.
    # Group means are both 2, so centred [[-1, 1], [-2, 2]], divided by sqrt(10 / 3).
    adv = group_advantages(t([[1.0, 3.0], [0.0, 4.0]]), scale="batch", eps=0.0)
    assert_close(adv, t([[-1.0, 1.0], [-2.0, 2.0]]) / math.sqrt(10 / 3))


def test_none_scale_only_centres():
    # Group means 2 and 2.5: [[1-2, 3-2], [0-2.5, 5-2.5]].
    adv = group_advantages(t([[1.0, 3.0], [0.0, 5.0]]), scale="none")
    assert_close(adv, t([[-1.0, 1.0], [-2.5, 2.5]]))


def test_equal_rewards_give_zero_even_with_eps_zero():
    # std 0 and centred 0: must be 0, never 0 / 0.
    for scale in ("group", "batch"):
        adv = group_advantages(t([[2.0, 2.0, 2.0]]), scale=scale, eps=0.0)
        assert_close(adv, t([[0.0, 0.0, 0.0]]))


def test_leave_one_out_baseline():
    # [1, 2, 6]: baselines are the means of the others: (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    # -> [1-4, 2-3.5, 6-1.5] = [-3, -1.5, 4.5] (= G/(G-1) * (r - mean) = 1.5 * [-2, -1, 3]).
    adv = group_advantages(t([[1.0, 2.0, 6.0]]), scale="none", leave_one_out=True)
    assert_close(adv, t([[-3.0, -1.5, 4.5]]))
    # With group scale: std of [1, 2, 6] is sqrt((4 + 1 + 9) / 2) = sqrt(7).
    adv = group_advantages(t([[1.0, 2.0, 6.0]]), scale="group", leave_one_out=True, eps=0.0)
    assert_close(adv, t([[-3.0, -1.5, 4.5]]) / math.sqrt(7))


def test_nan_rewards_are_excluded_and_get_zero():
    rewards = t([[1.0, NAN, 3.0], [NAN, 5.0, NAN], [NAN, NAN, NAN]])
    # Group 0 valid [1, 3]: mean 2, std sqrt(2) -> [-1/sqrt2, 0, 1/sqrt2]; group 1 has one valid -> 0; group 2 -> 0.
    adv = group_advantages(rewards, scale="group", eps=0.0)
    r = 1 / math.sqrt(2)
    assert_close(adv, t([[-r, 0.0, r], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # Leave-one-out: group 0 baselines are 3 (for 1) and 1 (for 3) -> [-2, 0, 2]; single-valid group 1 -> 0.
    adv = group_advantages(rewards, scale="none", leave_one_out=True)
    assert_close(adv, t([[-2.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # Batch: valid rewards 1, 3, 5: mean 3, unbiased var (4 + 0 + 4) / 2 = 4, std 2 -> group 0 [-1, 0, 1] / 2.
    adv = group_advantages(rewards, scale="batch", eps=0.0)
    assert_close(adv, t([[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert not torch.isnan(adv).any()


def test_integer_rewards_give_float_advantages():
    adv = group_advantages(torch.tensor([[0, 1]]), scale="none")
    assert adv.is_floating_point()
    assert_close(adv, torch.tensor([[-0.5, 0.5]], dtype=adv.dtype))


# ---------------------------------------------------------------------------------------------- importance ratios


def test_token_ratio_and_padding():
    # exp(log .5 - log .25) = 2 ; exp(log .2 - log .4) = 0.5 ; padding (even -inf) holds 1.
    logp = t([[math.log(0.5), math.log(0.2), -math.inf]])
    old = t([[math.log(0.25), math.log(0.4), 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert_close(importance_ratio(logp, old, mask), t([[2.0, 0.5, 1.0]]))


def test_token_ratio_is_clamped():
    # log-ratio 30 is clamped to 20; -30 to -20.
    ratio = importance_ratio(t([[30.0, -30.0]]), t([[0.0, 0.0]]), torch.ones(1, 2))
    assert_close(ratio, t([[math.exp(20), math.exp(-20)]]))


def test_gspo_sequence_ratio_value_and_gradient():
    # Log-ratios row 0: [0.2, -0.4, pad] -> mean -0.1; row 1: [0.1, 0.3, 0.2] -> mean 0.2.
    old = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logp = t([[0.2, -0.4, 0.5], [0.1, 0.3, 0.2]]).requires_grad_()
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert_close(sequence_log_ratio(logp, old, mask), t([-0.1, 0.2]))
    ratio = importance_ratio(logp, old, mask, level="sequence")
    s0, s1 = math.exp(-0.1), math.exp(0.2)
    assert_close(ratio, t([[s0, s0, s0], [s1, s1, s1]]))
    # ratio_t = exp(sg(log s) + logp_t - sg(logp_t)): d ratio_t / d logp_t = s_i, no cross-token terms,
    # and padding logp gets no gradient. Weights w make each token's gradient distinguishable.
    w = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (ratio * w).sum().backward()
    assert_close(logp.grad, t([[s0 * 1, s0 * 2, 0.0], [s1 * 4, s1 * 5, s1 * 6]]))


# ------------------------------------------------------------------------------------------------------ clipping


def _ratios_case():
    # Two sequences with ratios [0.5, 0.9, 1.1, 1.5] (old = 0, logp = log r); A = +1 and A = -1.
    r = t([[0.5, 0.9, 1.1, 1.5]] * 2)
    logp = r.log().requires_grad_()
    return logp, torch.zeros_like(r), t([1.0, -1.0]), torch.ones_like(r)


def test_symmetric_clip_values_fractions_and_gradient():
    logp, old, adv, mask = _ratios_case()
    out = policy_loss(logp, old, adv, mask)
    # A = +1: L = max(-r, -clip(r, .8, 1.2)) = [-0.5, -0.9, -1.1, max(-1.5, -1.2) = -1.2]  (sum -3.7)
    # A = -1: L = max(r, clip(r)) = [max(.5, .8) = 0.8, 0.9, 1.1, 1.5]                   (sum  4.3)
    # token_mean over 8 tokens: 0.6 / 8 = 0.075.
    assert_close(out.loss, t(0.075))
    assert_close(out.pg_loss, t(0.075))
    assert out.kl is None
    # clipped high: A > 0 and r = 1.5 > 1.2 (1 of 8); clipped low: A < 0 and r = 0.5 < 0.8 (1 of 8).
    assert_close(out.clip_high_frac, t(1 / 8))
    assert_close(out.clip_low_frac, t(1 / 8))
    assert_close(out.dual_clip_frac, t(0.0))
    assert_close(out.ratio_mean, t(1.0))  # (0.5 + 0.9 + 1.1 + 1.5) / 4
    # dL/dlogp = -A * r / 8 on unclipped tokens, 0 on clipped ones.
    out.loss.backward()
    expected = t([[-0.5, -0.9, -1.1, 0.0], [0.0, 0.9, 1.1, 1.5]]) / 8
    assert_close(logp.grad, expected)


def test_asymmetric_clip_higher():
    logp, old, adv, mask = _ratios_case()
    out = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.6)
    # Upper bound 1.6: A = +1 row is unclipped, [-0.5, -0.9, -1.1, -1.5] (sum -4.0); A = -1 row as before 4.3.
    assert_close(out.loss, t(0.3 / 8))
    assert_close(out.clip_high_frac, t(0.0))
    assert_close(out.clip_low_frac, t(1 / 8))
    out = policy_loss(logp, old, adv, mask, eps_low=0.6, eps_high=0.2)
    # Lower bound 0.4: A = -1 row unclipped [0.5, 0.9, 1.1, 1.5] (sum 4.0); A = +1 row -3.7 -> 0.3 / 8.
    assert_close(out.loss, t(0.3 / 8))
    assert_close(out.clip_low_frac, t(0.0))
    assert_close(out.clip_high_frac, t(1 / 8))


def test_dual_clip():
    r = t([[4.0, 2.0], [5.0, 1.0], [5.0, 1.0]])
    logp = r.log().requires_grad_()
    adv, mask, old = t([-1.0, -2.0, 1.0]), torch.ones_like(r), torch.zeros_like(r)
    out = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    # A = -1, r = [4, 2]: L = max(r, clip(r)) = [4, 2]; min with -A*c = 3 -> [3 (dual), 2].
    # A = -2, r = [5, 1]: L = [10, 2]; min with 6 -> [6 (dual), 2].
    # A = +1, r = [5, 1]: L = [max(-5, -1.2) = -1.2, -1] (clipped high once); dual clip does not apply.
    # Sum 3 + 2 + 6 + 2 - 1.2 - 1 = 10.8 over 6 tokens.
    assert_close(out.loss, t(10.8 / 6))
    assert_close(out.dual_clip_frac, t(2 / 6))
    assert_close(out.clip_high_frac, t(1 / 6))
    assert_close(out.clip_low_frac, t(0.0))
    # Dual-clipped and high-clipped tokens get no gradient; the others -A * r / 6.
    out.loss.backward()
    assert_close(logp.grad, t([[0.0, 2.0], [0.0, 2.0], [0.0, -1.0]]) / 6)
    # Without dual clip: 4 + 2 + 10 + 2 - 1.2 - 1 = 15.8.
    assert_close(policy_loss(logp, old, adv, mask).loss, t(15.8 / 6))


def test_non_finite_padding_does_not_leak():
    # Padding log-probs of -inf / NaN must change neither the loss nor make any gradient non-finite.
    logp = t([[-0.5, -math.inf], [-1.0, NAN]]).requires_grad_()
    old, ref = t([[-0.6, NAN], [-1.0, 0.0]]), t([[-0.5, NAN], [-1.0, -math.inf]])
    mask = t([[1.0, 0.0], [1.0, 0.0]])
    for importance in ("token", "sequence"):
        out = policy_loss(logp, old, t([1.0, -1.0]), mask, importance=importance, ref_logp=ref, beta=0.1)
        # Token 0,0: r = e^0.1 (< 1.2), A = 1 -> -e^0.1; token 1,0: r = 1, A = -1 -> 1; KL 0 on both.
        assert_close(out.loss, t((1 - math.exp(0.1)) / 2))
        logp.grad = None
        out.loss.backward()
        assert torch.isfinite(logp.grad).all()
        assert_close(logp.grad[:, 1], t([0.0, 0.0]))


# ------------------------------------------------------------------------------------------------------------ KL


def _kl_case():
    # log_r = ref - logp = [0.5, -1.0, 0.0]
    return t([[-1.0, -0.5, -2.0]]), t([[-0.5, -1.5, -2.0]])


def test_kl_estimators_by_hand():
    logp, ref = _kl_case()
    assert_close(kl_penalty(logp, ref, "k1"), t([[-0.5, 1.0, 0.0]]))  # -log_r
    assert_close(kl_penalty(logp, ref, "k2"), t([[0.125, 0.5, 0.0]]))  # 0.5 log_r^2
    # exp(log_r) - log_r - 1: e^0.5 - 1.5 ; e^-1 + 1 - 1 ; 1 - 0 - 1
    assert_close(kl_penalty(logp, ref, "k3"), t([[math.exp(0.5) - 1.5, math.exp(-1.0), 0.0]]))


def test_k3_is_nonnegative_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    logp = (torch.randn(8, 16, generator=gen, dtype=F64) * 3).requires_grad_()
    ref = torch.randn(8, 16, generator=gen, dtype=F64) * 3
    kl = kl_penalty(logp, ref, "k3")
    assert (kl >= 0).all()
    kl.sum().backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp), except where the result is clamped at 10.
    expected = torch.where(kl.detach() < 10, 1 - (ref - logp.detach()).exp(), torch.zeros_like(ref))
    assert_close(logp.grad, expected)


def test_kl_clamps():
    # log_r = 50 -> 20: k3 = e^20 - 21 -> 10 ; k1 = -20 -> -10.  log_r = -50 -> -20: k1 = 20 -> 10.
    # log_r = 5: k1 = -5 ; k2 = 12.5 -> 10.
    logp, ref = t([[0.0, 0.0, 0.0]]), t([[50.0, -50.0, 5.0]])
    assert_close(kl_penalty(logp, ref, "k3")[0, 0], t(10.0))
    assert_close(kl_penalty(logp, ref, "k1"), t([[-10.0, 10.0, -5.0]]))
    assert_close(kl_penalty(logp, ref, "k2"), t([[10.0, 10.0, 10.0]]))


def test_kl_term_in_policy_loss():
    logp, ref = _kl_case()
    mask, adv = torch.ones_like(logp), t([0.0])
    # A = 0 so the PG part is 0; k3 token mean = (e^0.5 - 1.5 + e^-1 + 0) / 3; loss = 0.1 * kl.
    out = policy_loss(logp, logp.clone(), adv, mask, ref_logp=ref, beta=0.1)
    kl = (math.exp(0.5) - 1.5 + math.exp(-1.0)) / 3
    assert_close(out.kl, t(kl))
    assert_close(out.pg_loss, t(0.0))
    assert_close(out.loss, t(0.1 * kl))
    # beta = 0 ignores ref_logp entirely: no KL reported.
    out = policy_loss(logp, logp.clone(), adv, mask, ref_logp=ref, beta=0.0)
    assert out.kl is None
    assert_close(out.loss, out.pg_loss)


# --------------------------------------------------------------------------------------------------- aggregation


def _agg_case():
    # Row 0 keeps [1, 2] (len 2, sum 3), row 1 keeps [4] (len 1, sum 4); the NaN is padding and must not leak.
    values = t([[1.0, 2.0, NAN], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return values, mask


def test_aggregation_modes_by_hand():
    values, mask = _agg_case()
    # token_mean: (3 + 4) / num_tokens
    assert_close(aggregate(values, mask, "token_mean", 3, 2, 4), t(7 / 3))
    assert_close(aggregate(values, mask, "token_mean", torch.tensor(10), 2, 4), t(0.7))
    # seq_mean: (3 / 2 + 4 / 1) / num_sequences
    assert_close(aggregate(values, mask, "seq_mean", 3, 2, 4), t(2.75))
    assert_close(aggregate(values, mask, "seq_mean", 3, 5, 4), t(5.5 / 5))
    # seq_sum_norm: 7 / (max_completion_length * num_sequences) = 7 / (4 * 2)
    assert_close(aggregate(values, mask, "seq_sum_norm", 3, 2, 4), t(7 / 8))


def test_aggregation_empty_mask_gives_zero():
    values = t([[1.0, 2.0]])
    mask = torch.zeros(1, 2, dtype=torch.bool)
    for mode in ("token_mean", "seq_mean", "seq_sum_norm"):
        assert_close(aggregate(values, mask, mode, 0, 1, 2), t(0.0))


def test_policy_loss_default_counts_and_float_mask():
    gen = torch.Generator().manual_seed(1)
    logp = torch.randn(3, 4, generator=gen, dtype=F64) * 0.1
    old = torch.randn(3, 4, generator=gen, dtype=F64) * 0.1
    adv = t([1.0, -0.5, 2.0])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    base = policy_loss(logp, old, adv, mask.bool(), aggregation="token_mean", num_tokens=6, num_sequences=3)
    assert_close(policy_loss(logp, old, adv, mask).loss, base.loss)  # defaults: mask.sum() = 6, B = 3
    # seq_sum_norm defaults to max_completion_length = T = 4 and num_sequences = B = 3: sum / 12 = token_mean * 6 / 12.
    assert_close(policy_loss(logp, old, adv, mask, aggregation="seq_sum_norm").loss, base.loss * 6 / 12)


@pytest.mark.parametrize("importance", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_micro_batch_invariance_of_loss_and_gradient(aggregation, importance):
    gen = torch.Generator().manual_seed(2)
    B, T = 6, 5
    logp0 = -torch.rand(B, T, generator=gen, dtype=F64) * 2
    old = logp0 + torch.randn(B, T, generator=gen, dtype=F64) * 0.3
    ref = logp0 + torch.randn(B, T, generator=gen, dtype=F64) * 0.3
    adv = torch.randn(B, generator=gen, dtype=F64)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    kwargs = dict(eps_low=0.1, eps_high=0.25, dual_clip=2.0, importance=importance, ref_logp=None, beta=0.05)
    kwargs |= dict(aggregation=aggregation, num_tokens=mask.sum(), num_sequences=B, max_completion_length=8)

    def run(rows: slice, logp: torch.Tensor) -> torch.Tensor:
        args = {**kwargs, "ref_logp": ref[rows]}
        return policy_loss(logp[rows], old[rows], adv[rows], mask[rows], **args).loss

    full_logp = logp0.clone().requires_grad_()
    full = run(slice(None), full_logp)
    full.backward()
    split_logp = logp0.clone().requires_grad_()
    total = sum(run(rows, split_logp) for rows in (slice(0, 2), slice(2, 3), slice(3, 6)))
    total.backward()
    assert_close(total, full)
    assert_close(split_logp.grad, full_logp.grad)
    assert full_logp.grad.abs().sum() > 0  # the comparison is not vacuous


# --------------------------------------------------------------------------------------------------------- misc


def test_masked_mean():
    values = t([[1.0, 2.0, NAN], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_mean(values, mask), t(7 / 3))
    assert_close(masked_mean(values, mask, dim=1), t([1.5, 4.0]))
    assert_close(masked_mean(values, torch.zeros_like(mask)), t(0.0))


def test_entropy_from_logits():
    # Uniform over 4: log 4. One allowed token among -inf logits: 0, with a finite gradient.
    logits = t([[[0.0, 0.0, 0.0, 0.0], [3.0, -math.inf, -math.inf, -math.inf]]]).requires_grad_()
    ent = entropy_from_logits(logits)
    assert_close(ent, t([[math.log(4), 0.0]]))
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, generator=gen, dtype=F64) * 5
    assert_close(entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy())


def test_dtype_is_preserved():
    logp = torch.zeros(2, 3, dtype=torch.float32)
    out = policy_loss(logp, logp, torch.ones(2), torch.ones(2, 3))
    assert out.loss.dtype == torch.float32
    assert_close(out.loss, torch.tensor(-1.0))  # ratio 1, A = 1: L = -1 on every token
    assert group_advantages(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float64


# -------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(eps_low=-0.1), "eps_low"),
        (dict(eps_high=-0.1), "eps_high"),
        (dict(dual_clip=1.0), "dual_clip"),
        (dict(dual_clip=0.5), "dual_clip"),
        (dict(beta=0.1), "ref_logp"),
        (dict(beta=-0.1), "beta"),
        (dict(advantages=torch.zeros(2, 1)), "advantages"),
        (dict(old_logp=torch.zeros(2, 4)), "old_logp"),
        (dict(mask=torch.ones(3, 3)), "mask"),
        (dict(ref_logp=torch.zeros(2, 2), beta=0.1), "ref_logp"),
        (dict(logp=torch.zeros(6), old_logp=torch.zeros(6), mask=torch.ones(6)), "2-D"),
        (dict(aggregation="mean"), "mode"),
        (dict(importance="tok"), "level"),
        (dict(kl_estimator="k4", ref_logp=torch.zeros(2, 3), beta=0.1), "estimator"),
        (dict(max_completion_length=0), "max_completion_length"),
    ],
)
def test_policy_loss_rejects_bad_arguments(overrides, match):
    args = dict(logp=torch.zeros(2, 3), old_logp=torch.zeros(2, 3), advantages=torch.zeros(2), mask=torch.ones(2, 3))
    args |= overrides
    tensors = [args.pop(k) for k in ("logp", "old_logp", "advantages", "mask")]
    with pytest.raises(ValueError, match=match):
        policy_loss(*tensors, **args)


def test_group_advantages_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(2, 2), scale="global")
    with pytest.raises(ValueError, match="eps"):
        group_advantages(torch.zeros(2, 2), eps=-1.0)
