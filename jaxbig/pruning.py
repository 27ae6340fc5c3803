r"""Magnitude pruning: exact-count masks, the Zhu & Gupta (2017) schedule, and an optax
transformation that keeps pruned weights exactly zero through training.

    select(params, targets)              which leaves may be pruned (tree of bool)
    magnitude_masks(params, s, scope)    True = kept; the k = round(s * n) smallest |w| of
                                         each group are False (exactly k, ties by position)
    polynomial_sparsity(step, ...)       the gradual schedule s_t (below)
    prune_by_magnitude(...)              optax transformation, last in the chain
    train_metrics(opt_state)             {'sparsity': ...} for the train step's metrics

Selection: `targets` are regexes fullmatched on '/'-joined parameter paths; [] = the default,
every kernel (Dense / DenseGeneral / Conv, ndim >= 2) outside a path containing 'embed':
never norm scales, biases, token / position / patch embeddings, the GPT's untied unembedding
or LoRA adapters. Scope 'global' ranks all selected weights together (one group); 'layer'
ranks each leaf on its own, and each layer of a leaf stacked on a leading `layers` axis
(nn.scan: the GPT's `layers/...`, the ViT's `encoder/layers/...`) on its own. k is numpy's
round (halves to even) of sparsity * group size, so the count is met exactly; among equal
magnitudes the earlier position (row-major, leaves in tree order) is pruned first.

Gradual schedule (Zhu & Gupta 2017, "To prune, or not to prune"): masks are recomputed at
the updates t = t0, t0 + dt, ..., and t_end (dt = `frequency`; t_end also when off the grid)
to the sparsity

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))**3          (t0 == t_end: s_f)

and held in between; before t0 nothing is pruned. t counts updates from 0: update t takes
the state from step t to t + 1, so the checkpoint of step t + 1 has sparsity s_t. As in the
paper (and tf-model-optimization), the masks are computed from the weights before the
update, with those already pruned ranked lowest, so a pruned weight stays pruned while the
sparsity rises. One shot = t0 == t_end (`begin_step == end_step`, e.g. 0 on a run that
starts from a trained one with init_from).

The transformation keeps the masks (bool, the shapes and shardings of the weights they mask)
in its state and returns `where(mask, update, -param)`: param + update is exactly 0 where
masked whatever ran before it in the chain (weight decay, Adam moments, lr multipliers).
Gradients still reach pruned weights and the moments still see them (as in the paper);
only the weights are held at zero. `optimizer.prune` (jaxbig/optim.py) configures it.

    jaxbig prune --workdir runs/lm --sparsity 0.5 --out runs/lm_p50      # one shot, report
    jaxbig train --config experiments/lm.py --workdir runs/lm_g80 \
        --config.optimizer.prune.sparsity=0.8 --config.optimizer.prune.begin_step=100 \
        --config.optimizer.prune.end_step=400 --config.optimizer.prune.frequency=25

Measured (experiments/lm.py defaults: tiny GPT, 600 AdamW steps, weight decay 0.1; the
default selection, 851,968 of 885,888 parameters; validation loss in nats/byte):

    dense                                      1.458
    one shot, global, 50 % (jaxbig prune)      1.686  (+15.6 %)
    one shot, global, 80 %                     2.734  (+87.5 %)
    one shot, layer, 80 %                      2.559  (+75.5 %)
    gradual 0 -> 50 %, updates 100..400 by 25  1.497  (+2.6 %)
    gradual 0 -> 80 %, the same schedule       1.532  (+5.0 %)

The gradual runs end with exactly round(s * 851,968) zeros (681,574 at 80 %); their wall
time (411-503 s against 442 s dense, on 2 shared CPU cores) is within this machine's noise.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbig.config import ConfigError
from jaxbig.models.layout import STACKS

SCOPES = ('global', 'layer')
# Kernels outside any path that names an embedding (see the module docstring).
DEFAULT_TARGETS = (r'(?!.*embed)(.*/)?kernel',)


# ----------------------------------------------------------------------------- selection

def path_name(path) -> str:
    """A tree path as '/'-joined keys ('layers/attn/query/kernel')."""
    return jax.tree_util.keystr(path, simple=True, separator='/')


def is_stacked(path) -> bool:
    """True when the leaf at `path` stacks layers on its leading axis (nn.scan)."""
    return bool(set(STACKS) & set(path_name(path).split('/')))  # (models.layout)


def _compile(targets, where: str = 'optimizer.prune.targets'):
    out = []
    for pattern in targets:
        try:
            out.append(re.compile(pattern))
        except re.error as e:
            raise ConfigError(f'{where}: {pattern!r} is not a regex ({e})') from None
    return out


def select(params, targets=(), *, where: str = 'optimizer.prune.targets'):
    """Tree of bool like `params`: True where a leaf may be pruned (see the module docstring).

    Leaves without arrays (optax.MaskedNode: the frozen part of a `freeze` partition) are
    kept as they are and never selected. Raises ConfigError (naming `where`, the option)
    when a target matches no (trainable) parameter, or when nothing is selected.
    """
    default = not targets
    patterns = _compile(DEFAULT_TARGETS if default else targets, where)
    used = set()

    def chosen(path, x):
        name = path_name(path)
        hits = [p.pattern for p in patterns if p.fullmatch(name)]
        used.update(hits)
        ok = bool(hits) and jnp.issubdtype(x.dtype, jnp.floating)
        return bool(ok and (np.ndim(x) >= 2 if default else np.ndim(x) >= 1))

    selection = jax.tree_util.tree_map_with_path(chosen, params)
    names = sorted(path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    for pattern in [] if default else targets:
        if pattern not in used:
            kind = 'trainable parameter' if where.startswith('optimizer') else 'parameter'
            raise ConfigError(f'{where}: {pattern!r} matches no {kind} (paths look like '
                              f'{", ".join(names[:3])})')
    if not any(jax.tree.leaves(selection)):
        raise ConfigError(f'{where}: no parameter selected for pruning (targets '
                          f'{list(targets) or "default"}; paths look like {", ".join(names[:3])})')
    return selection


# ----------------------------------------------------------------------------- masks

def _keep(scores, k):
    """scores [n] -> bool [n]: False at the k smallest (ties: lower index first). k may be
    traced."""
    n = scores.shape[0]
    order = jnp.argsort(scores, stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= k


def group_sizes(shapes, stacked, scope: str) -> list[int]:
    """Elements per ranking group: [sum of all] ('global') or one per leaf ('layer'; for a
    stacked leaf, the size of one layer's slice)."""
    sizes = [int(np.prod(s)) for s in shapes]
    if scope == 'global':
        return [sum(sizes)]
    return [n // s[0] if st else n for n, s, st in zip(sizes, shapes, stacked)]


def prune_counts(sparsity, sizes) -> np.ndarray:
    """k = round(sparsity * n) for each group size n (numpy round: halves to even); int."""
    return np.round(np.asarray(sparsity, np.float64)[..., None] * np.asarray(sizes)).astype(
        np.int64)


def _group_masks(scores, stacked, ks, scope: str):
    """Keep-masks for the selected leaves' `scores` (float32, their shapes), pruning ks[g]
    in group g (see `group_sizes`)."""
    if scope == 'global':
        keep = _keep(jnp.concatenate([s.reshape(-1) for s in scores]), ks[0])
        bounds = np.cumsum([s.size for s in scores])[:-1]
        return [k.reshape(s.shape) for k, s in zip(jnp.split(keep, bounds), scores)]
    out = []
    for s, st, k in zip(scores, stacked, ks):
        if st:
            out.append(jax.vmap(lambda x, k=k: _keep(x.reshape(-1), k))(s).reshape(s.shape))
        else:
            out.append(_keep(s.reshape(-1), k).reshape(s.shape))
    return out


def magnitude_masks(params, sparsity: float, *, scope: str = 'global', targets=(),
                    where: str = 'optimizer.prune.targets'):
    """Tree of bool like `params`: False at the pruned weights, True elsewhere (also at every
    leaf outside the selection). Exactly round(sparsity * n) weights of each group are
    pruned: the smallest |w| (see the module docstring for groups and ties)."""
    check_scope(scope)
    if not 0 <= sparsity < 1:
        raise ConfigError(f'sparsity={sparsity}: must be in [0, 1)')
    selection = select(params, targets, where=where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = [(path, x) for (path, x), s in zip(flat, treedef.flatten_up_to(selection)) if s]
    stacked = [is_stacked(path) and np.ndim(x) >= 2 for path, x in chosen]
    sizes = group_sizes([np.shape(x) for _, x in chosen], stacked, scope)
    scores = [jnp.abs(jnp.asarray(x)).astype(jnp.float32) for _, x in chosen]
    ks = prune_counts(sparsity, sizes).astype(np.int32)
    masks = iter(_group_masks(scores, stacked, ks, scope))
    leaves = [next(masks) if s else jnp.ones(np.shape(x), bool)
              for (_, x), s in zip(flat, treedef.flatten_up_to(selection))]
    return treedef.unflatten(leaves)


def apply_masks(params, masks):
    """params with the masked (False) weights set to exactly 0."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.asarray(p).dtype)),
                        params, masks)


def zero_counts(params, selection) -> list[dict]:
    """Per selected leaf: path, shape, zeros, size, and for a stacked leaf the zeros of each
    layer's slice (`per_layer`), counted on the values themselves (host numpy)."""
    out = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    for (path, x), s in zip(flat, treedef.flatten_up_to(selection)):
        if not s:
            continue
        x = np.asarray(x)
        row = dict(path=path_name(path), shape=tuple(x.shape), zeros=int(np.sum(x == 0)),
                   size=int(x.size))
        if is_stacked(path) and x.ndim >= 2:
            row['per_layer'] = [int(np.sum(layer == 0)) for layer in x]
            row['layer_size'] = int(x[0].size)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- schedule

def event_steps(begin: int, end: int, frequency: int) -> np.ndarray:
    """The updates that recompute the masks: begin, begin + frequency, ... (< end), end."""
    return np.unique(np.append(np.arange(begin, end, max(frequency, 1)), end)).astype(np.int64)


def polynomial_sparsity(step, initial: float, final: float, begin: int, end: int,
                        frequency: int = 1):
    """Target sparsity in force after update `step` (an int or an int array): s_t of the last
    mask update t <= step (Zhu & Gupta 2017, module docstring); 0 before `begin`."""
    step = np.asarray(step, np.int64)
    events = event_steps(begin, end, frequency)
    last = events[np.clip(np.searchsorted(events, step, side='right') - 1, 0, None)]
    frac = (last - begin) / (end - begin) if end > begin else np.ones_like(last, np.float64)
    s = final + (initial - final) * (1.0 - frac) ** 3
    return np.where(step < begin, 0.0, s)


# ----------------------------------------------------------------------------- optax

class PruneState(NamedTuple):
    """count: int32 [] updates seen; masks: bool arrays (True = kept) at the selected leaves,
    optax.MaskedNode elsewhere; num_pruned: int32 [] weights masked now."""

    count: jax.Array
    masks: Any
    num_pruned: jax.Array


def prune_by_magnitude(sparsity: float, *, initial_sparsity: float = 0.0,
                       scope: str = 'global', begin_step: int = 0, end_step: int = 0,
                       frequency: int = 1, targets=()) -> optax.GradientTransformation:
    """Magnitude pruning on the polynomial schedule (module docstring); put it last in the
    chain. Needs params in `update`. The schedule's per-group counts are a host table
    [mask updates, groups] (int), built when the update is traced."""
    check_scope(scope)
    events = event_steps(begin_step, end_step, frequency)
    targets_s = polynomial_sparsity(events, initial_sparsity, sparsity, begin_step, end_step,
                                    frequency)

    def init(params):
        selection = select(params, targets)
        return PruneState(
            count=jnp.zeros((), jnp.int32),
            masks=jax.tree.map(lambda p, s: jnp.ones(p.shape, bool) if s else optax.MaskedNode(),
                               params, selection),
            num_pruned=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError('prune_by_magnitude needs params')
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat_u = [u for _, u in with_paths]
        flat_p, flat_m = treedef.flatten_up_to(params), treedef.flatten_up_to(state.masks)
        idx = [i for i, m in enumerate(flat_m) if not isinstance(m, optax.MaskedNode)]
        stacked = [is_stacked(with_paths[i][0]) and flat_p[i].ndim >= 2 for i in idx]
        sizes = group_sizes([flat_p[i].shape for i in idx], stacked, scope)
        ks = prune_counts(targets_s, sizes)  # [events, groups]
        mult = [1] if scope == 'global' else [
            flat_p[i].shape[0] if st else 1 for i, st in zip(idx, stacked)]
        totals = (ks * np.asarray(mult)).sum(-1)  # [events] weights masked after each
        t = state.count
        e = jnp.clip(jnp.searchsorted(jnp.asarray(events), t), 0, len(events) - 1)
        is_event = jnp.asarray(events)[e] == t

        def recompute():
            scores = [jnp.where(flat_m[i], jnp.abs(flat_p[i]).astype(jnp.float32), -1.0)
                      for i in idx]
            new = _group_masks(scores, stacked, jnp.asarray(ks, jnp.int32)[e], scope)
            return new, jnp.asarray(totals, jnp.int32)[e]

        masks, num_pruned = jax.lax.cond(
            is_event, recompute, lambda: ([flat_m[i] for i in idx], state.num_pruned))
        new_u, new_m = list(flat_u), list(flat_m)
        for i, m in zip(idx, masks):
            new_u[i] = jnp.where(m, flat_u[i], -flat_p[i].astype(flat_u[i].dtype))
            new_m[i] = m
        return treedef.unflatten(new_u), PruneState(t + 1, treedef.unflatten(new_m), num_pruned)

    return optax.GradientTransformation(init, update)


def train_metrics(opt_state) -> dict:
    """{'sparsity': fraction of the selected weights masked} when `opt_state` holds a
    PruneState, else {} (read from its counter: no pass over the weights)."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState)):
        if isinstance(s, PruneState):
            n = sum(m.size for m in jax.tree.leaves(s.masks))
            return {'sparsity': s.num_pruned.astype(jnp.float32) / n}
    return {}


# ----------------------------------------------------------------------------- config

def check_scope(scope: str):
    if scope not in SCOPES:
        raise ConfigError(f'optimizer.prune.scope={scope!r}: expected one of {SCOPES}')


def validate(cfg, total_steps: int | None = None):
    """One-line ConfigErrors for `config.optimizer.prune` (keys: jaxbig/optim.py)."""
    check_scope(cfg.scope)
    if not 0 <= cfg.sparsity < 1:
        raise ConfigError(f'optimizer.prune.sparsity={cfg.sparsity}: must be in [0, 1) '
                          '(0 = off)')
    if not 0 <= cfg.initial_sparsity <= cfg.sparsity:
        raise ConfigError(f'optimizer.prune.initial_sparsity={cfg.initial_sparsity}: must be '
                          f'in [0, optimizer.prune.sparsity={cfg.sparsity}]')
    if cfg.begin_step < 0 or cfg.end_step < cfg.begin_step:
        raise ConfigError(f'optimizer.prune: begin_step={cfg.begin_step}, end_step='
                          f'{cfg.end_step}: need 0 <= begin_step <= end_step')
    if cfg.frequency < 1:
        raise ConfigError(f'optimizer.prune.frequency={cfg.frequency}: must be >= 1')
    if total_steps is not None and cfg.sparsity > 0 and cfg.end_step >= total_steps:
        raise ConfigError(f'optimizer.prune.end_step={cfg.end_step}: must be < train.steps='
                          f'{total_steps} (updates count from 0), or the final sparsity is '
                          'never reached')
    if isinstance(cfg.targets, str):
        raise ConfigError(f'optimizer.prune.targets={cfg.targets!r}: expected a list of regexes')
    _compile(cfg.targets)


def from_config(cfg) -> optax.GradientTransformation:
    """prune_by_magnitude for `config.optimizer.prune` (validated)."""
    return prune_by_magnitude(
        cfg.sparsity, initial_sparsity=cfg.initial_sparsity, scope=cfg.scope,
        begin_step=cfg.begin_step, end_step=cfg.end_step, frequency=cfg.frequency,
        targets=tuple(cfg.targets))
