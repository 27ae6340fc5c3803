"""Optimizer from config: an optax chain of small, named pieces.

        clip (global norm) -> L1 penalty -> coupled L2 penalty -> preconditioner
        (sgd momentum / adam / rmsprop) -> decoupled weight decay -> -lr(step) -> lr_mults
        -> magnitude pruning (only with prune.sparsity > 0: jaxbig/pruning.py)

With `freeze`, that whole chain runs on the trainable parameters only, and frozen ones get
zero updates and carry no optimizer state (optax.MaskedNode in the state, no arrays):

        multi_transform({'trainable': <the chain above>, 'frozen': set_to_zero()}, labels)

`config.optimizer` keys (every one is read; `jaxbig.defaults.optimizer()` gives the defaults,
the only place they are set):
    name          'sgd' | 'adam' | 'adamw' | 'rmsprop'
    lr            peak learning rate (> 0)
    schedule      'constant' | 'warmup_cosine' | 'warmup_linear' | 'inverse_sqrt'
    warmup_steps  linear warmup from 0 (all schedules)
    min_lr_ratio  final lr as a fraction of `lr` (cosine / linear decay)
    b1, b2, eps   Adam / RMSprop (b2 is RMSprop's decay)
    mu_dtype      Adam's first-moment storage dtype ('' = the parameter dtype; 'bfloat16'
                  halves its memory, as MaxText's mu_dtype; the update math stays float32)
    momentum, nesterov   SGD
    weight_decay  decoupled (AdamW-style) decay: update += weight_decay * param on the
                parameters `weight_decay_mask` selects (then scaled by -lr(step))
  weight_decay_mask  list of regexes on '/'-joined parameter paths (re.fullmatch): matching
                parameters are decayed, the rest are not; [] = DEFAULT_WEIGHT_DECAY_MASK
                (below); ['.*'] decays everything. Each regex must match a (trainable)
                parameter. A config.json written before this key existed reads as [].
    l2            coupled L2 penalty: grad += l2 * param (all parameters, whatever the
                weight_decay_mask: it is a gradient term, not a decay rule)
    l1            L1 penalty: grad += l1 * sign(param)
    clip_norm     global-norm clipping threshold (0 = off)
    decay_steps   length of the schedule in updates (0 = train.steps). Fix it when you plan to
                extend a run by raising train.steps, so the schedule of the first part is unchanged
  grad_accum_steps  micro-batches per update (handled by `step.py`, read here for checks)
  freeze        list of regexes on '/'-joined parameter paths: matching parameters are never
                updated (bit-identical), keep no optimizer state, and take no part in
                clipping (the global norm is the trainable gradients' norm)
  lr_mults      list of [regex, multiplier]: learning-rate multiplier for matching
                parameters (first match wins, freeze patterns first); the rest use 1
  prune         magnitude pruning (jaxbig/pruning.py), last in the chain, so pruned weights
                stay exactly 0 whatever comes before (weight decay, Adam moments); with
                `freeze` it acts on the trainable parameters only. Keys:
      sparsity          final fraction of the selected weights set to 0, in [0, 1); 0 = off
                        (no transformation in the chain: results bit-identical)
      initial_sparsity  the sparsity of the first mask update (Zhu & Gupta's s_i)
      scope             'global' (one ranking over every selected weight) | 'layer' (each
                        leaf, and each layer of a scanned stack, pruned to the sparsity)
      begin_step, end_step, frequency   masks recomputed at updates begin, begin +
                        frequency, ..., end (counted from 0; end < train.steps); sparsity
                        s_f + (s_i - s_f) (1 - (t - begin) / (end - begin))^3; begin == end
                        = one shot. The train metrics then include `sparsity`.
      targets           regexes on '/'-joined paths; [] = every kernel (ndim >= 2) outside
                        paths containing 'embed' (never norms, biases, embeddings)
Every freeze / lr_mults / prune.targets / weight_decay_mask regex must match at least one
parameter (a typo is an error), and the number of parameters in each group ('frozen',
'mult_<i>', 'default') is logged, as are the decayed and not-decayed tensors and scalars
when weight_decay > 0.

Which parameters decay: by what a parameter is (its path), never by its rank. A rank rule
(ndim >= 2, what this file used before) depends on the layout: with model.scan_layers the
norm scales and biases of the stacked layers are [layers, d] and were decayed, unrolled they
were not; and it always decayed embeddings, position tables and the [heads, head_dim]
query/key/value biases of GPT-2 / Qwen2. The default rules (DEFAULT_WEIGHT_DECAY_MASK):

    (.*/)?kernel    the weight of every Dense / DenseGeneral / `layers.Linear` / Conv layer:
                    attention query/key/value/out, MLP, LSTM gates, patch embedding conv,
                    poolers, heads, CLIP projections, an untied unembedding (flax's name)
    lora/.*/(a|b)   LoRA factors of a kernel (jaxbig/lora.py), as HF PEFT + Trainer decay
                    lora_A / lora_B

Not decayed, since no rule names them (every model in jaxbig/models was checked, scanned and
unrolled): norm scales and biases (LayerNorm / RMSNorm / GroupNorm `scale`, `bias`), every
`bias` (Dense, q/k/v, BERT's `mlm_bias`), token embedding tables (`embedding`, tied or not;
T5's `shared`), position tables (GPT-2's `pos_embed/embedding`, ViT / BERT / text encoder
`pos_embedding`, BERT's `type_embedding`, T5's `relative_bias/embedding`), class tokens
(`cls`), and CLIP / SigLIP's scalar `logit_scale` / `logit_bias`.

What others do: big_vision decays `.*/kernel$` by default (`wd_mults`; its ViT names
position tables `pos_embedding`, so those are not decayed), as here; minGPT decays only
nn.Linear weights (never biases, LayerNorm, nn.Embedding); levanter's default mask skips
LayerNorm / RMSNorm / Embedding modules and biases and decays the rest; the Hugging Face
Trainer skips biases and norm parameters and decays everything else, embeddings included;
nanoGPT decays every parameter with dim >= 2 (matmul weights and embeddings), the rank rule
this replaces; MaxText's optimizers.py gives optax.adamw no mask, so it decays everything.
"""

from __future__ import annotations

import functools
import logging
import math
import re

import jax
import jax.numpy as jnp
import optax

from jaxbig import moe_bias, pruning
from jaxbig.config import ConfigError

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'rmsprop')
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_linear', 'inverse_sqrt')


def build_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the update step."""
    lr, warmup = cfg.lr, cfg.warmup_steps
    end = lr * cfg.min_lr_ratio
    name = cfg.schedule
    if name == 'constant':
        main = optax.constant_schedule(lr)
    elif name == 'warmup_cosine':
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=end / lr)
    elif name == 'warmup_linear':
        main = optax.linear_schedule(lr, end, max(total_steps - warmup, 1))
    elif name == 'inverse_sqrt':
        main = lambda s: lr * jax.lax.rsqrt(jnp.maximum(s + warmup, 1.0) / max(warmup, 1))
    else:
        raise ConfigError(f'optimizer.schedule={name!r}: expected one of {SCHEDULES}')
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def add_l1_penalty(l1: float) -> optax.GradientTransformation:
    """grad += l1 * sign(param): the subgradient of l1 * |param|_1."""

    def update(updates, state, params):
        if params is None:
            raise ValueError('add_l1_penalty needs params')
        return jax.tree.map(
            lambda g, p: g + l1 * jnp.sign(p).astype(g.dtype), updates, params
        ), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scale_by_lr_mults(mults) -> optax.GradientTransformation:
    """updates *= the multiplier of the first `[regex, multiplier]` matching the leaf's path.

    Leaves no pattern matches are unchanged. Masked leaves (optax.MaskedNode, as inside the
    trainable branch of a freeze partition) have no array and are skipped.
    """
    mults = [(pattern, float(m)) for pattern, m in mults]

    def scale(path, u):
        name = _path_name(path)
        for pattern, m in mults:
            if re.fullmatch(pattern, name):
                return m * u  # as optax.scale(m)
        return u

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build_optimizer(cfg, total_steps: int, *, moe_bias_rate: float = 0.0
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optax chain, learning-rate schedule) for `config.optimizer`; with
    `moe_bias_rate` > 0 (model.moe.bias_rate), the MoE balancing bias's own rule around it
    (jaxbig.moe_bias)."""
    tx, schedule = _build(cfg, total_steps)
    if moe_bias_rate > 0:
        tx = moe_bias.with_rule(tx, moe_bias_rate, tuple(cfg.freeze))
    return tx, schedule


def _build(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    validate(cfg, total_steps)
    schedule = build_schedule(cfg, cfg.decay_steps or total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.l1 > 0:
        parts.append(add_l1_penalty(cfg.l1))
    if cfg.l2 > 0:
        parts.append(optax.add_decayed_weights(cfg.l2))
    name = cfg.name
    if name == 'sgd':
        if cfg.momentum > 0:
            parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    elif name in ('adam', 'adamw'):
        parts.append(
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=cfg.mu_dtype or None)
        )
    elif name == 'rmsprop':
        parts.append(optax.scale_by_rms(decay=cfg.b2, eps=cfg.eps))
    freeze, mults = list(cfg.freeze), [tuple(m) for m in cfg.lr_mults]
    if cfg.weight_decay > 0:
        parts.append(add_masked_weight_decay(
            cfg.weight_decay, tuple(_weight_decay_mask_config(cfg)), trainable_only=bool(freeze)))
    parts.append(optax.scale_by_learning_rate(schedule))
    if mults:
        parts.append(scale_by_lr_mults(mults))
    prune = _prune_config(cfg)
    if prune is not None and prune.sparsity > 0:
        parts.append(pruning.from_config(prune))
    chain = optax.chain(*parts)
    if not freeze and not mults:
        return chain, schedule
    groups = functools.partial(param_groups, freeze=freeze, mults=mults)
    if not freeze:
        return _checking_groups(chain, groups), schedule

    def trainable_or_frozen(params):
        return jax.tree.map(lambda g: 'frozen' if g == 'frozen' else 'trainable', groups(params))

    tx = optax.multi_transform(
        {'trainable': chain, 'frozen': optax.set_to_zero()}, trainable_or_frozen
    )
    return tx, schedule


def _prune_config(cfg):
    """`cfg.prune`, or None for a config.json written before pruning existed (= off)."""
    return cfg.get('prune')


def _weight_decay_mask_config(cfg):
    """`cfg.weight_decay_mask`, or () (the default rules) for a config.json written before
    the key existed."""
    return cfg.get('weight_decay_mask', ())


def _checking_groups(tx, groups) -> optax.GradientTransformation:
    """`tx` whose init first runs `groups(params)` (pattern checks and the group log)."""

    def init(params):
        groups(params)
        return tx.init(params)

    return optax.GradientTransformation(init, tx.update)


def _path_name(path) -> str:
    """A tree path as '/'-joined keys ('encoder/block_0/attn/query/kernel')."""
    return jax.tree_util.keystr(path, simple=True, separator='/')


def param_groups(params, *, freeze, mults):
    """Tree of group labels ('frozen', 'mult_<i>' or 'default') for `params`.

    First match wins, freeze patterns before lr_mults patterns. Raises ConfigError when a
    pattern matches no parameter; logs the number of parameters in each group.
    """
    used = set()

    def label(path, _):
        name = _path_name(path)
        for pattern in freeze:
            if re.fullmatch(pattern, name):
                used.add(pattern)
                return 'frozen'
        for i, (pattern, _m) in enumerate(mults):
            if re.fullmatch(pattern, name):
                used.add(pattern)
                return f'mult_{i}'
        return 'default'

    labels = jax.tree_util.tree_map_with_path(label, params)
    for pattern in [*freeze, *(p for p, _ in mults)]:
        if pattern not in used:
            flat = jax.tree_util.tree_flatten_with_path(params)[0]
            names = sorted(_path_name(p) for p, _ in flat)
            raise ConfigError(
                f'optimizer freeze/lr_mults pattern {pattern!r} matches no '
                f'parameter (paths look like {", ".join(names[:3])})'
            )
    counts = {}
    for g in jax.tree.leaves(labels):
        counts[g] = counts.get(g, 0) + 1
    logging.info('optimizer parameter groups: %s', dict(sorted(counts.items())))
    return labels


# ----------------------------------------------------------------------------- weight decay

# Regexes (re.fullmatch on '/'-joined paths) of the parameters decoupled weight decay applies
# to by default; the module docstring says what each names and what is left out.
DEFAULT_WEIGHT_DECAY_MASK = (
    r'(.*/)?kernel',
    r'lora/.*/(a|b)',
)


def _compile_weight_decay_mask(patterns):
    if isinstance(patterns, str):
        raise ConfigError(f'optimizer.weight_decay_mask={patterns!r}: expected a list of '
                          "regexes such as ['.*/kernel'] ([] = the default rules)")
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except (re.error, TypeError) as e:
            raise ConfigError(f'optimizer.weight_decay_mask: {pattern!r} is not a regex '
                              f'({e})') from None
    return out


def weight_decay_mask(params, patterns=(), *, trainable_only: bool = False,
                      log_rate: float | None = None):
    """Tree of bool like `params`: True where decoupled weight decay applies.

    patterns: regexes fullmatched on '/'-joined paths; () = DEFAULT_WEIGHT_DECAY_MASK. Leaves
    without arrays (optax.MaskedNode: the frozen part of a `freeze` partition) stay as they
    are. Raises ConfigError when one of `patterns` matches no parameter (`trainable_only`:
    the message says "trainable"). log_rate: log the decayed / not-decayed counts, at that
    rate (the init path; None = silent, as on every update).
    """
    default = not patterns
    compiled = _compile_weight_decay_mask(DEFAULT_WEIGHT_DECAY_MASK if default else patterns)
    used = set()

    def decayed(path, _):
        hits = [p.pattern for p in compiled if p.fullmatch(_path_name(path))]
        used.update(hits)
        return bool(hits)

    mask = jax.tree_util.tree_map_with_path(decayed, params)
    for pattern in () if default else patterns:
        if pattern not in used:
            flat = jax.tree_util.tree_flatten_with_path(params)[0]
            names = sorted(_path_name(p) for p, _ in flat)
            kind = 'trainable parameter' if trainable_only else 'parameter'
            raise ConfigError(f'optimizer.weight_decay_mask: {pattern!r} matches no {kind} '
                              f'(paths look like {", ".join(names[:3])})')
    if log_rate is not None:
        _log_weight_decay(params, mask, log_rate, 'default rules' if default else list(patterns))
    return mask


def _log_weight_decay(params, mask, rate, rules):
    counts = {True: [0, 0], False: [0, 0]}  # decayed?: [tensors, scalars]
    for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
        counts[m][0] += 1
        counts[m][1] += math.prod(x.shape)
    (dt, ds), (nt, ns) = counts[True], counts[False]
    log = logging.info if dt else logging.warning
    log('weight decay %g (%s): %d tensors / %s scalars decayed, %d tensors / %s scalars not',
        rate, rules, dt, f'{ds:,}', nt, f'{ns:,}')


def add_masked_weight_decay(rate: float, patterns=(), *, trainable_only: bool = False
                            ) -> optax.GradientTransformation:
    """update += rate * param on the leaves `weight_decay_mask(params, patterns)` selects.

    As optax.add_decayed_weights(rate, mask) (the same state: optimizer states saved before
    the mask was by path still load), whose init also checks the patterns and logs the
    decayed / not-decayed counts once.
    """
    mask = functools.partial(weight_decay_mask, patterns=patterns, trainable_only=trainable_only)
    tx = optax.add_decayed_weights(rate, mask=mask)

    def init(params):
        weight_decay_mask(params, patterns, trainable_only=trainable_only, log_rate=rate)
        return tx.init(params)

    return optax.GradientTransformation(init, tx.update)


def validate(cfg, total_steps: int | None = None):
    """Range checks with one-line errors naming the key (`total_steps`: train.steps, for
    the checks that need it; None skips them)."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f'optimizer.name={cfg.name!r}: expected one of {OPTIMIZERS}')
    if not cfg.lr > 0:
        raise ConfigError(f'optimizer.lr={cfg.lr}: must be > 0')
    if cfg.name == 'adam' and cfg.weight_decay > 0:
        raise ConfigError(
            'optimizer.weight_decay: decoupled decay is AdamW; '
            "use optimizer.name='adamw', or optimizer.l2 for coupled L2 with Adam"
        )
    for key in ('weight_decay', 'l1', 'l2', 'clip_norm', 'warmup_steps', 'momentum', 'decay_steps'):
        if cfg[key] < 0:
            raise ConfigError(f'optimizer.{key}={cfg[key]}: must be >= 0')
    mu_dtype = cfg.mu_dtype
    if mu_dtype:
        if cfg.name not in ('adam', 'adamw'):
            raise ConfigError(f'optimizer.mu_dtype={mu_dtype!r}: only Adam / AdamW keep a '
                              f'first moment (optimizer.name={cfg.name!r})')
        try:
            ok = jnp.issubdtype(jnp.dtype(mu_dtype), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"optimizer.mu_dtype={mu_dtype!r}: expected a float dtype such "
                              "as 'bfloat16' or 'float32', or '' for the parameter dtype")
    if cfg.grad_accum_steps < 1:
        raise ConfigError(f'optimizer.grad_accum_steps={cfg.grad_accum_steps}: must be >= 1')
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f'optimizer.min_lr_ratio={cfg.min_lr_ratio}: must be in [0, 1]')
    _compile_weight_decay_mask(_weight_decay_mask_config(cfg))
    if _prune_config(cfg) is not None:
        pruning.validate(cfg.prune, total_steps)
