"""Preference optimisation: DPO and its kin on (prompt, chosen, rejected) pairs.

batch (jaxbig.data.pipelines.preference, one pair per row, prompt + response in each):
    chosen_inputs, chosen_targets int32[b, T]; chosen_mask float32[b, T] (1 = a target that
    is a response token, its end-of-sequence included); the same three for `rejected_`.

Chosen and rejected rows go through the model in one forward pass ([2b, T]). Per pair:

    logp_c, logp_r   summed log-probability of the chosen / rejected response (nats)
    avg_c, avg_r     the same divided by the response's length in tokens
    ref_c, ref_r     the reference model's (summed, or averaged where the type averages)

    type='dpo'    -log s(beta h) (1 - eps) - log s(-beta h) eps,  h = (logp_c - logp_r) -
                  (ref_c - ref_r) (Rafailov et al. 2023: TRL's loss_type='sigmoid');
                  eps = label_smoothing > 0 is cDPO (Mitchell 2023; in TRL 1.16 the
                  CPO 'sigmoid' loss of the log-ratios, its DPO 'sigmoid' has no eps)
    type='ipo'    (h - 1 / (2 beta))^2 with h from the averaged log-probs (Azar et al. 2023,
                  as TRL computes it)
    type='simpo'  -log s(beta (avg_c - avg_r) - gamma) (1 - eps) - log s(-...) eps, no
                  reference (Meng et al. 2024; TRL's CPO loss_type='simpo')
    type='orpo'   nll_c - beta log s(log odds(avg_c) - log odds(avg_r)), odds(p) = p / (1 - p),
                  no reference (Hong et al. 2024). nll_c is each pair's mean NLL over its
                  chosen tokens: every pair weighs the same (TRL averages the NLL over the
                  batch's chosen tokens instead; the two agree when the lengths do)

s is the logistic sigmoid. Every number is a Mean over the pairs of the update (count = valid
pairs, jaxbig/aggregate.py), so micro-batches and devices do not change it. Metrics, with
TRL's names: rewards/chosen, rewards/rejected (beta (logp - ref) for dpo / ipo, beta avg for
simpo / orpo), rewards/accuracies (chosen reward > rejected), rewards/margins, logps/chosen,
logps/rejected (the policy's summed log-probs), and two of jaxbig's own: logps/accuracies (the
policy alone ranks chosen above rejected: summed log-probs; an SFT model's preference accuracy
when it is also the reference) and nll (chosen, nats per token); pairs (a Sum).

`config` (the experiment's `loss` section): name='preference', type, beta, label_smoothing
(dpo, simpo), gamma (simpo), reference (dpo, ipo): a trained workdir whose params are loaded
once and closed over by the step (frozen, replicated on every device like a distillation
teacher: fine for a few hundred MB; a reference sharded like the policy is not built yet),
or 'adapters_off' for a LoRA policy: the reference is the policy with its adapters
zeroed — the frozen base it started from, no second copy (the base must be frozen:
optimizer.freeze). `bind(config)` builds it.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.config import ConfigError

TYPES = ('dpo', 'ipo', 'simpo', 'orpo')
NEEDS_REFERENCE = ('dpo', 'ipo')
ADAPTERS_OFF = 'adapters_off'
BASE_PROBES = ('embed/embedding', 'layers_0/attn/query/kernel', 'layers/mlp/up/kernel',
               'final_norm/scale')  # paths a frozen base must cover


def model_inputs(batch):
    return (batch['chosen_inputs'],)


def response_logps(logits, targets, mask):
    """(summed log-prob float32[rows], response length float32[rows]) of `targets` under
    `logits` [rows, T, vocab] over the positions where mask [rows, T] is 1."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return jnp.sum(token * mask, axis=-1), jnp.sum(mask, axis=-1)


def pair_losses(kind: str, policy, reference, lengths, *, beta: float,
                label_smoothing: float = 0.0, gamma: float = 0.0):
    """Per-pair (loss float32[b], chosen reward [b], rejected reward [b], nll [b]).

    policy, reference: (chosen, rejected) summed log-probs [b] each (reference None for the
    reference-free types); lengths: (chosen, rejected) response tokens [b] each.
    """
    (pc, pr), (lc, lr) = policy, lengths
    avg_c, avg_r = pc / jnp.maximum(lc, 1.0), pr / jnp.maximum(lr, 1.0)
    nll = -avg_c

    def smoothed(h):
        return (-jax.nn.log_sigmoid(h) * (1.0 - label_smoothing)
                - jax.nn.log_sigmoid(-h) * label_smoothing)

    if kind in NEEDS_REFERENCE:
        rc, rr = reference
        if kind == 'dpo':
            loss = smoothed(beta * ((pc - pr) - (rc - rr)))
        else:
            h = (avg_c - avg_r) - (rc / jnp.maximum(lc, 1.0) - rr / jnp.maximum(lr, 1.0))
            loss = jnp.square(h - 1.0 / (2.0 * beta))
        return loss, beta * (pc - rc), beta * (pr - rr), nll
    if kind == 'simpo':
        return smoothed(beta * (avg_c - avg_r) - gamma), beta * avg_c, beta * avg_r, nll
    if kind == 'orpo':
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        return nll - beta * jax.nn.log_sigmoid(log_odds), beta * avg_c, beta * avg_r, nll
    raise ConfigError(f'loss.type={kind!r}: expected one of {TYPES}')


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable at both ends; x is kept <= -1e-6 (a response of
    probability 1 in float32 would make it -inf)."""
    x = jnp.minimum(x, -1e-6)
    return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _both(batch):
    """inputs, targets, mask [2b, T]: the chosen rows, then the rejected ones."""
    return tuple(jnp.concatenate([batch[f'chosen_{k}'], batch[f'rejected_{k}']])
                 for k in ('inputs', 'targets', 'mask'))


def pair_logps(apply_fn, params, batch, rngs, train):
    """((chosen, rejected) summed log-probs [b], (chosen, rejected) lengths [b])."""
    inputs, targets, mask = _both(batch)
    logits = apply_fn({'params': params}, inputs, train=train, rngs=rngs)
    total, length = response_logps(logits, targets, mask)
    b = batch['chosen_inputs'].shape[0]
    return (total[:b], total[b:]), (length[:b], length[b:])


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True, reference=None):
    """Returns (loss, metrics) for one batch of pairs; `reference` (set by bind) is
    (apply_fn, params, batch) -> (chosen, rejected) reference log-probs [b] each, or None
    (reference-free)."""
    kind = config.get('type', 'dpo')
    if kind in NEEDS_REFERENCE and reference is None:
        raise ConfigError(f'loss.type={kind!r} needs its reference model: use '
                          'losses.bind(config)')
    policy, lengths = pair_logps(apply_fn, params, batch, rngs, train)
    ref = None if reference is None else jax.lax.stop_gradient(reference(apply_fn, params, batch))
    loss, chosen, rejected, nll = pair_losses(
        kind, policy, ref, lengths, beta=config.get('beta', 0.1),
        label_smoothing=config.get('label_smoothing', 0.0), gamma=config.get('gamma', 0.5))
    pairs = aggregate.example_mask(batch, batch['chosen_inputs'].shape[0])
    metrics = {
        'loss': aggregate.mean(loss, pairs),
        'rewards/chosen': aggregate.mean(chosen, pairs),
        'rewards/rejected': aggregate.mean(rejected, pairs),
        'rewards/accuracies': aggregate.mean((chosen > rejected).astype(jnp.float32), pairs),
        'rewards/margins': aggregate.mean(chosen - rejected, pairs),
        'logps/chosen': aggregate.mean(policy[0], pairs),
        'logps/rejected': aggregate.mean(policy[1], pairs),
        'logps/accuracies': aggregate.mean((policy[0] > policy[1]).astype(jnp.float32), pairs),
        'nll': aggregate.mean(nll, pairs),
        'pairs': aggregate.Sum(pairs.sum()),
    }
    return metrics['loss'], metrics


def check(config) -> None:
    """One-line ConfigError for a loss section (and the run around it) that cannot work."""
    loss = config.loss
    kind = loss.get('type', 'dpo')
    if kind not in TYPES:
        raise ConfigError(f'loss.type={kind!r}: expected one of {TYPES}')
    if not loss.get('beta', 0.1) > 0:
        raise ConfigError(f"loss.beta={loss.get('beta')}: must be > 0")
    if not 0.0 <= loss.get('label_smoothing', 0.0) < 0.5:
        raise ConfigError(f"loss.label_smoothing={loss.get('label_smoothing')}: must be in "
                          '[0, 0.5)')
    if (config.model.get('moe') or {}).get('experts'):
        raise ConfigError('loss.name=preference: a Mixture-of-Experts policy is not supported '
                          'yet (its auxiliary losses count tokens, the preference loss pairs)')
    if kind in NEEDS_REFERENCE:
        check_reference(config, f'loss.type={kind!r}')


def check_reference(config, what: str) -> None:
    """One-line ConfigError unless loss.reference names a reference `what` can use: a
    workdir, or 'adapters_off' with a LoRA policy whose base is frozen."""
    reference = config.loss.get('reference', '')
    if not reference:
        raise ConfigError(f"{what} needs loss.reference: the run the policy starts from (a "
                          f"workdir), or {ADAPTERS_OFF!r} for a LoRA policy")
    if reference == ADAPTERS_OFF:
        from jaxbig import lora

        if not lora.enabled(config.get('lora')):
            raise ConfigError(f'loss.reference={ADAPTERS_OFF!r} needs a LoRA policy '
                              '(lora.targets)')
        freeze = [re.compile(f) for f in config.optimizer.get('freeze', [])]
        for path in BASE_PROBES:  # every non-adapter path must be frozen
            if not any(f.fullmatch(path) for f in freeze):
                raise ConfigError(f"loss.reference={ADAPTERS_OFF!r}: the base must stay what "
                                  f"the reference is, but optimizer.freeze leaves {path!r} "
                                  "trainable; set optimizer.freeze=['(?!lora/).*']")


def adapters_off(params):
    """The params with every LoRA adapter zeroed: the base model's forward."""
    from jaxbig import lora

    return {k: (jax.tree.map(jnp.zeros_like, v) if k == lora.KEY else v)
            for k, v in params.items()}


def load_reference(workdir: str):
    """(model, params) of the reference run: its config.json and latest checkpoint."""
    from jaxbig import run as run_lib

    return run_lib.load_frozen(workdir, 'loss.reference')


def bind(config):
    """The loss function with its reference model built once (see the module docstring)."""
    kind = config.get('type', 'dpo')
    reference = None
    if kind in NEEDS_REFERENCE and config.get('reference') == ADAPTERS_OFF:
        def reference(apply_fn, params, batch):
            return pair_logps(apply_fn, adapters_off(params), batch, None, False)[0]
    elif kind in NEEDS_REFERENCE:
        if not config.get('reference'):
            raise ConfigError(f'loss.type={kind!r} needs loss.reference (a workdir)')
        ref_model, ref_params = load_reference(config.reference)

        def reference(apply_fn, params, batch):
            return pair_logps(ref_model.apply, ref_params, batch, None, False)[0]

    def bound(apply_fn, params, batch, rngs, config, *, train: bool = True):
        return loss_fn(apply_fn, params, batch, rngs, config, train=train, reference=reference)

    return bound
