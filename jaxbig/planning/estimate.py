"""Analytic per-device figures of a train step, beside what XLA compiled, and the advice a
plan that does not fit gets.

    sharded_bytes(tree of ShapeDtypeStruct, tree of shardings) -> bytes on the most loaded
        device (each leaf's shard shape x itemsize; exact, no compile needed)
    ideal_share(...)   the same figures as formulas: parameters and optimizer state split
        fsdp x tensor ways, the batch data x fsdp ways (small leaves that do not split, e.g.
        norm scales under tensor parallelism, make the real share slightly larger)
    gpt_activation_bytes(model, rows, seq, tensor)   what a GPT's backward keeps per device:
        per layer and token, in elements (h = embed, a / kv = query / key-value heads,
        d = head_dim, M = mlp_dim, t = tensor-parallel size, s = seq):
          remat 'none':  4h + (a + 2kv)d/t + a d/t + 3M/t  in the compute dtype, plus the
                         softmax probabilities a s/t in float32 (the einsum attention path;
                         'cudnn' / 'splash' keep a/t log-sum-exps instead)
          remat 'dots':  (a + 2kv)d/t + 2M/t + 3h   (outputs of matmuls without batch dims)
          remat 'full':  h (each layer's input), plus one layer's 'none' set while it is
                         recomputed
        times num_layers, plus the logits (float32 for the loss, twice: values and
        gradient) rows x s x vocab / t (with loss.logits_chunk = c > 0: rows x c x vocab / t,
        one chunk's), plus the gradients (one parameter-sized buffer).
        A model estimate in the spirit of Korthikanti et al. (2022), not XLA's schedule.
    advice(terms, knobs) -> the largest term and the knobs that would shrink it
"""

from __future__ import annotations

import math

import jax
import numpy as np


def leaf_bytes(x) -> int:
    return int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize


def sharded_bytes(tree, shardings) -> int:
    """Bytes of `tree` on the most loaded device under `shardings` (same structure)."""
    per_device: dict = {}
    for x, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = sharding.shard_shape(x.shape)
        size = int(math.prod(shard)) * np.dtype(x.dtype).itemsize
        for device in sharding.device_set:
            per_device[device] = per_device.get(device, 0) + size
    return max(per_device.values(), default=0)


def total_bytes(tree) -> int:
    return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def _model_share(tree, model_ways: int, expert_ways: int) -> float:
    """Bytes of `tree` per device when every array splits `model_ways` ways and a MoE
    layer's expert kernels (an 'experts' key in the path) also `expert_ways` ways."""
    def share(path, x):
        experts = any(getattr(k, 'key', getattr(k, 'name', None)) == 'experts' for k in path)
        return leaf_bytes(x) / (model_ways * (expert_ways if experts else 1))

    return sum(share(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0])


def ideal_share(params, opt_state, batch, mesh_shape: dict) -> dict:
    model_ways = mesh_shape['fsdp'] * mesh_shape['tensor']
    expert_ways = mesh_shape.get('expert', 1)
    batch_ways = mesh_shape['data'] * mesh_shape['fsdp'] * expert_ways
    return dict(params=_model_share(params, model_ways, expert_ways),
                optimizer=_model_share(opt_state, model_ways, expert_ways),
                batch=total_bytes(batch) / batch_ways)


def gpt_activation_bytes(model, rows: int, seq: int, tensor: int, grad_bytes: float,
                         platform: str = 'cpu', logits_chunk: int = 0) -> float:
    """Estimated activation + gradient bytes per device of a GPT train step (see module
    docstring). rows: sequences per device per micro-batch; platform: the target's (what
    attention='auto' runs there); logits_chunk: the loss's (0 = the whole sequence)."""
    h, a, kv = model.embed_dim, model.num_heads, model.resolved_kv_heads
    d, mlp, t = model.resolved_head_dim, model.mlp_dim, tensor
    act = np.dtype(model.dtype).itemsize
    full_set = (4 * h + (a + 2 * kv) * d / t + a * d / t + 3 * mlp / t) * act
    fused = model.attention in ('cudnn', 'splash') or (
        model.attention == 'auto' and platform != 'cpu')
    full_set += (a / t if fused else a * seq / t) * 4
    if model.remat == 'none':
        saved = model.num_layers * full_set
    elif model.remat == 'dots':
        saved = model.num_layers * ((a + 2 * kv) * d / t + 2 * mlp / t + 3 * h) * act
    else:
        saved = model.num_layers * h * act + full_set
    logits = rows * min(logits_chunk or seq, seq) * model.vocab_size / t * 2 * 4
    return rows * seq * saved + logits + grad_bytes


KNOBS = {
    'params': ['raise parallel.fsdp (or parallel.tensor): parameters split fsdp x tensor ways',
               'model.param_dtype=bfloat16 (halves them; keep an eye on update precision)'],
    'optimizer': ['optimizer.mu_dtype=bfloat16 (halves Adam\'s first moment)',
                  'raise parallel.fsdp: optimizer state splits like the parameters'],
    'temporaries': ['model.remat=full (keep only each layer\'s input; recompute the rest)',
                    'optimizer.grad_accum_steps=K (K micro-batches: activations / K)',
                    'loss.logits_chunk=1024 (the head on 1,024 positions at a time: only '
                    'that chunk\'s float32 logits exist)',
                    'raise parallel.tensor: the logits [rows, seq, vocab] split over it '
                    '(rule vocab -> tensor), as do heads and the MLP',
                    'more data x fsdp devices (fewer rows each)',
                    'model.dtype=bfloat16 (activations in 16 bits)'],
    'batch': ['more data x fsdp devices (fewer rows each)'],
}
# Only knobs that leave the objective unchanged are advised: never a smaller batch or
# sequence (another experiment). Gradient accumulation qualifies for every loss (sums and
# counts; a gradient cache for contrastive ones: jaxbig/step.py).


def advice(terms: dict, knobs: dict, capacity: float | None = None) -> tuple[str, list[str]]:
    """(name of the largest term, the knobs that shrink it, minus those already set). When
    parameters + optimizer state alone exceed `capacity`, the state's knobs come first:
    no activation setting can make that plan fit."""
    largest = max(terms, key=terms.get)
    names = [largest]
    if capacity and terms['params'] + terms['optimizer'] > capacity:
        state = ['params', 'optimizer'] if terms['params'] >= terms['optimizer'] else [
            'optimizer', 'params']
        names = state + [n for n in names if n not in state]
    out = []
    for name in names:
        for hint in KNOBS[name]:
            if not _already_set(hint, knobs) and hint not in out:
                out.append(hint)
    return largest, out


def _already_set(hint: str, knobs: dict) -> bool:
    for prefix, key, value in (('model.remat=full', 'remat', 'full'),
                               ('optimizer.mu_dtype', 'mu_dtype', 'bfloat16'),
                               ('model.param_dtype', 'param_dtype', 'bfloat16'),
                               ('model.dtype', 'dtype', 'bfloat16')):
        if hint.startswith(prefix) and knobs.get(key) == value:
            return True
    return False


def parameter_traffic(params, shardings, mesh_shape: dict, compute_dtype: str,
                      micro_batches: int = 1) -> dict:
    """The least collective traffic the parameters and their gradients need per step: bytes
    one device sends with bandwidth-optimal (ring) algorithms, the unit of
    `planning.hlo`'s wire_bytes.

    Each parameter split over 'fsdp' (f ways) is gathered for the forward and again for the
    backward of every micro-batch, (f-1)/f of the gathered array each time, and its gradient
    is reduce-scattered once, (f-1)/f; the gradient each device then holds (its fsdp shard,
    or the whole of a parameter not split over fsdp) is all-reduced over 'data' (d ways),
    2 (d-1)/d. Arrays in the compute dtype (jaxbig casts a parameter where a layer uses it,
    so the cast is what is gathered and what the gradient arrives in); a tensor-parallel
    split stays split. Activation collectives (tensor parallelism, sequence-wise) are not
    counted: this is the floor for parameter traffic, the quantity FSDP trades memory for.
    """
    f, d = mesh_shape.get('fsdp', 1), mesh_shape.get('data', 1)
    itemsize = np.dtype(compute_dtype).itemsize
    gathered = kept = 0.0
    for x, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        shard = math.prod(sharding.shard_shape(x.shape)) * itemsize
        axes = [a for entry in sharding.spec if entry is not None
                for a in (entry if isinstance(entry, tuple) else (entry,))]
        if 'fsdp' in axes and f > 1:
            gathered += shard * f  # the array a device holds once gathered
        else:
            kept += shard
    out = dict(gather=2 * micro_batches * gathered * (f - 1) / f,
               reduce_scatter=gathered * (f - 1) / f,
               data_all_reduce=2 * (d - 1) / d * (gathered / f + kept))
    out['total'] = sum(out.values())
    return out
