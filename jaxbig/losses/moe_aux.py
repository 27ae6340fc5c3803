"""The Mixture-of-Experts auxiliary losses and load metrics, from the routing stats a MoE
model sows (jaxbig.models.moe; `apply(..., mutable=['intermediates'])`). A helper of the
token losses (autoregressive, so SFT), not a loss of its own.

Every term counts the tokens the loss counts — its valid targets, `w` [b, t] — so each is
a Mean with the loss's own count and adds to it exactly (jaxbig/aggregate.py): micro-
batches, devices and padding change nothing. With E experts, k per token, L MoE layers,
probs p [L, b, t, E] and chosen c [L, b, t, E] (1 for the token's k experts):

    balance (Switch / Mixtral)   E * sum_e f_e * P_e, averaged over the L layers, where over
                                 a group of tokens f_e = sum w c_e / (k sum w) (the share
                                 of the group's k-assignments that went to e: no gradient)
                                 and P_e = sum w p_e / sum w (the mean router probability).
                                 1.0 when perfectly balanced. The group (`moe_balance_group`):
                                 'sequence' (default): each row, weighted by its tokens, so
                                 the loss is the same however the batch is split; 'batch':
                                 every token of one forward pass (Switch's and Mixtral's
                                 definition), which grad_accum_steps > 1 or pmap would
                                 change: refused there (losses.check_accumulation).
    router z-loss (ST-MoE)       logsumexp(router logits)^2 per token, averaged over layers.
    balancing bias (DeepSeek-V3) with model.moe.bias_rate > 0: a term worth 0 whose gradient
                                 for each layer's router_bias is its load minus the mean
                                 load (token counts, summed over micro-batches and devices
                                 like any gradient), so the optimizer's sign step
                                 (jaxbig.moe_bias) sees the whole update's imbalance.

`loss` config: moe_balance (coefficient, default 0.01; 0 = off), moe_z_loss (default 0.001;
0 = off), moe_balance_group. Metrics: moe_balance, moe_z_loss (the terms before their
coefficients), moe_load_imbalance (tokens of the busiest expert / the mean, per layer,
averaged: 1.0 = even; each layer's as moe_load_imbalance/layer_<i>, i counting the MoE
layers only (after model.moe.first_dense dense ones), which jaxbig train
plots into the workdir's moe_load.png) and moe_dropped (the fraction of k-assignments the
capacity dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate

GROUPS = ('sequence', 'batch')


def stats_of(variables) -> dict | None:
    """The routing stats in `apply`'s mutable output (each [layers, b, t, ...]), or None."""
    sown = dict(variables).get('intermediates', {}).get('moe')
    return None if sown is None else sown[0]


def balance(probs, chosen, w, group: str = 'sequence'):
    """The load-balancing loss as a Mean over the weighted tokens (see module docstring).
    probs, chosen [L, b, t, E]; w [b, t]."""
    num_layers, experts = probs.shape[0], probs.shape[-1]
    k = jnp.sum(chosen[0, 0, 0])
    w = w.astype(jnp.float32)
    spec = 'lbte,bt->lbe' if group == 'sequence' else 'lbte,bt->le'
    n = jnp.sum(w, -1) if group == 'sequence' else jnp.sum(w)  # tokens per group: [b] or []
    safe = jnp.maximum(n, 1.0)[..., None]
    f = jnp.einsum(spec, chosen, w) / (k * safe)  # [L, b, E] or [L, E]
    p = jnp.einsum(spec, probs, w) / safe
    per_group = experts * jnp.sum(f * p, -1)  # [L, b] or [L]
    return aggregate.Mean(jnp.sum(per_group * n) / num_layers, jnp.sum(w))


def add_to(loss: aggregate.Mean, metrics: dict, stats: dict, w, config):
    """loss + the configured auxiliary terms (same count), and metrics with the MoE entries."""
    group = config.get('moe_balance_group', 'sequence')
    if group not in GROUPS:
        raise ValueError(f'loss.moe_balance_group={group!r}: expected one of {GROUPS}')
    w = w.astype(jnp.float32)
    num_layers = stats['probs'].shape[0]
    bal = balance(stats['probs'], stats['chosen'], w, group)
    z = aggregate.Mean(jnp.sum(jnp.square(stats['log_z']) * w[None]) / num_layers, jnp.sum(w))
    k = jnp.sum(stats['chosen'][0, 0, 0])
    load = jnp.einsum('lbte,bt->le', stats['chosen'], w)  # [L, E] assignments per expert
    metrics = dict(
        metrics, moe_balance=bal, moe_z_loss=z, moe_load_imbalance=aggregate.Imbalance(load),
        **{f'moe_load_imbalance/layer_{i}': aggregate.Imbalance(load[i])
           for i in range(num_layers)},
        moe_dropped=aggregate.Mean(jnp.sum(stats['dropped'] * w[None]),
                                   k * num_layers * jnp.sum(w)))
    total = loss.total
    if 'bias' in stats:  # DeepSeek-V3's balancing bias: a term worth 0 whose gradient with
        # respect to the bias is each expert's load minus the layer's mean (token counts);
        # the optimizer moves it by -bias_rate * sign of that (jaxbig.moe_bias)
        deviation = jax.lax.stop_gradient(load - jnp.mean(load, -1, keepdims=True))
        bias = stats['bias']
        total = total + jnp.sum(deviation * (bias - jax.lax.stop_gradient(bias)))
    for coefficient, term in ((config.get('moe_balance', 0.01), bal),
                              (config.get('moe_z_loss', 0.001), z)):
        if coefficient:
            total = total + coefficient * term.total
    return aggregate.Mean(total, loss.count), metrics
