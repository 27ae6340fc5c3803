"""Mixture-of-Experts feed-forward layer (Switch / GShard / Mixtral / Qwen3-MoE).

Shapes: b batch, t tokens of a row, n = b * t, d embed, E experts, k experts per token,
m expert_dim, C a row's capacity per expert.

    router     logits = x . W_r in float32 (W_r `router` [d, E], logical ('embed', None))
               probs  = softmax(logits) over the E experts                 [b, t, E]
               top-k of probs -> experts [b, t, k], weights = their probs,
               divided by their sum when `normalize` (Mixtral; Qwen3-MoE's norm_topk_prob)
    experts    E SwiGLU MLPs, kernels stacked on a leading 'expert' axis:
               experts/gate/kernel, experts/up/kernel [E, d, m]; experts/down/kernel [E, m, d]
    output     y = sum over the k chosen experts of weight * expert(x)    [b, t, d]
               (+ a dense SwiGLU of shared_experts * m when shared_experts > 0, scaled
               per token by sigmoid(x . shared_gate) with `shared_gate`: Qwen2-MoE)

Dispatch (how tokens reach their experts; the same function, two costs):
    'dropless'  the n * k (token, expert) pairs sorted by expert and every expert applied to
                its own contiguous group with `jax.lax.ragged_dot` (a grouped matmul): no
                token dropped, no padding, work exactly n * k expert MLPs.
    'capacity'  GShard / Switch: each row gives every expert C = ceil(capacity_factor * k *
                t / E) slots (at most k * t); a row's first choices are placed before its
                second choices, in token order, and a pair past its expert's C slots is
                dropped (its weight lost; counted in the stats). One-hot dispatch / combine
                einsums of [b, t, E, C]. The capacity is per row, so a row computes the same
                in any batch, micro-batch or device. With capacity_factor >= E (C = k * t)
                nothing drops and it equals 'dropless'. KV-cached decoding is dropless.

The grouped matmul of 'dropless' (`grouped`, a speed switch: the same numbers): 'ragged_dot'
(TPU / GPU lower it to grouped-matmul kernels) or 'blocks' (each expert's rows padded to
blocks of B, one batched matmul over the blocks: XLA:CPU lowers ragged_dot to a masked
product over every expert, E times the work); 'auto' picks by platform.

Sharding: the stacked kernels' 'expert' axis maps to the 'expert' mesh axis (jaxbig.parallel).
'dropless' runs as a shard_map over the batch's mesh axes, each device sorting its own rows
(the kernels enter whole: gathered, as FSDP gathers a dense layer's); 'capacity' constrains
the dispatched slots [b, E, C, d] to ('expert_batch', 'expert', ...), so XLA moves each
row's slots to their experts' devices with all-to-alls and back (GShard).

The layer returns (y, stats) with per-token routing statistics that the loss turns into
the load-balancing auxiliary loss, the router z-loss and the load metrics
(jaxbig.losses.moe_aux), weighting each token as the batch says (padding counts nothing):

    probs    float32 [b, t, E]   the router's softmax
    chosen   float32 [b, t, E]   1 where the expert is among the token's k
    log_z    float32 [b, t]      logsumexp of the router logits
    dropped  float32 [b, t]      how many of the token's k pairs the capacity dropped
    bias     float32 [E]         the router_bias parameter (bias_rate > 0 only)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxbig.config import ConfigError
from jaxbig.models.layers import Mlp

DISPATCHES = ('dropless', 'capacity')


@dataclasses.dataclass(frozen=True)
class MoeSpec:
    """`config.model.moe` (experts=0: a dense model). See the module docstring."""

    experts: int = 0  # E; 0 = dense feed-forward (no MoE)
    experts_per_token: int = 2  # k
    expert_dim: int = 0  # m, each expert's hidden size; 0 = the model's mlp_dim
    shared_experts: int = 0  # a dense SwiGLU of shared_experts * m beside the routed ones
    normalize: bool = True  # top-k weights divided by their sum (Mixtral; Qwen3 flag)
    dispatch: str = 'dropless'  # 'dropless' | 'capacity'
    capacity_factor: float = 1.25  # 'capacity': slots per expert per row, see above
    grouped: str = 'auto'  # dropless's grouped matmul: 'ragged_dot' | 'blocks' | 'auto'
    # DeepSeek-V3's auxiliary-loss-free balancing: a bias per expert (`router_bias`) added to
    # the probabilities for the top-k choice only, moved by -bias_rate * sign(load - mean)
    # after every update (jaxbig.moe_bias); 0 = off. Usually with loss.moe_balance=0.
    bias_rate: float = 0.0
    # The first first_dense layers keep a dense MLP of model.mlp_dim (DeepSeek's
    # first_k_dense_replace; Qwen3-MoE's mlp_only_layers = [0 .. first_dense - 1]).
    first_dense: int = 0
    # Qwen2-MoE: the shared experts' output scaled per token by sigmoid(x . shared_gate),
    # a learned [embed, 1] vector; needs shared_experts > 0.
    shared_gate: bool = False

    @classmethod
    def of(cls, section) -> MoeSpec | None:
        """The spec of config.model.moe (a dict, or None), or None for a dense model."""
        if not section:
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ConfigError(f'model.moe: unknown key(s) {unknown}; expected {sorted(fields)}')
        spec = cls(**dict(section))
        return spec if spec.experts else None

    def check(self, mlp: str = 'swiglu', mlp_bias: bool = False, num_layers: int = 0):
        """One-line ConfigErrors for bad fields; mlp / mlp_bias: the model's, which the
        experts cannot follow other than as SwiGLU without biases; num_layers: the model's
        depth (first_dense must leave a MoE layer; 0 = not checked)."""
        if mlp != 'swiglu' or mlp_bias:
            raise ConfigError(f'model.moe: the experts are SwiGLU without biases, but model.mlp='
                              f"{mlp!r}, mlp_bias={mlp_bias}; set 'swiglu' and False")
        if self.experts < 0 or not 1 <= self.experts_per_token <= max(self.experts, 1):
            raise ConfigError(f'model.moe: experts={self.experts}, experts_per_token='
                              f'{self.experts_per_token}: expected 1 <= k <= experts')
        if self.dispatch not in DISPATCHES:
            raise ConfigError(f'model.moe.dispatch={self.dispatch!r}: expected one of '
                              f'{DISPATCHES}')
        if self.grouped not in ('auto', *GROUPED):
            raise ConfigError(f'model.moe.grouped={self.grouped!r}: expected auto or one of '
                              f'{tuple(GROUPED)}')
        if self.dispatch == 'capacity' and self.capacity_factor <= 0:
            raise ConfigError(f'model.moe.capacity_factor={self.capacity_factor}: expected > 0')
        if self.bias_rate < 0:
            raise ConfigError(f'model.moe.bias_rate={self.bias_rate}: expected >= 0 (0 = off)')
        if self.expert_dim < 0 or self.shared_experts < 0:
            raise ConfigError('model.moe.expert_dim and shared_experts must be >= 0')
        if self.shared_gate and not self.shared_experts:
            raise ConfigError('model.moe.shared_gate=True gates the shared experts, but '
                              'shared_experts=0; set shared_experts >= 1')
        if self.first_dense < 0 or (num_layers and self.first_dense >= num_layers):
            raise ConfigError(f'model.moe.first_dense={self.first_dense}: expected 0 <= k < '
                              f'model.num_layers={num_layers} (the leading dense layers)')

    def capacity(self, t: int) -> int:
        """C: slots per expert in a row of t tokens."""
        k, e = self.experts_per_token, self.experts
        return min(k * t, math.ceil(self.capacity_factor * k * t / e))


def route(logits, k: int, normalize: bool, bias=None):
    """logits float32 [..., E] -> (probs [..., E], experts int32 [..., k], weights [..., k]).
    bias [E] (or None): added to the probabilities for the choice only; the weights are the
    chosen experts' own probabilities (DeepSeek-V3)."""
    probs = jax.nn.softmax(logits, axis=-1)
    if bias is None:
        weights, experts = jax.lax.top_k(probs, k)
    else:
        _, experts = jax.lax.top_k(probs + jax.lax.stop_gradient(bias), k)
        weights = jnp.take_along_axis(probs, experts, axis=-1)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, experts, weights


def swiglu_experts(x, sizes, gate, up, down, dtype):
    """Grouped SwiGLU with `jax.lax.ragged_dot`: x [p, d] sorted by expert, sizes int32 [E]
    rows per expert; kernels [E, d, m], [E, d, m], [E, m, d] -> [p, d]."""
    x = x.astype(dtype)
    g = jax.lax.ragged_dot(x, gate.astype(dtype), sizes)
    u = jax.lax.ragged_dot(x, up.astype(dtype), sizes)
    return jax.lax.ragged_dot(nn.silu(g) * u, down.astype(dtype), sizes)


def block_size(pairs: int, experts: int) -> int:
    """Rows per block of `swiglu_blocks`: a power of two near a quarter of an expert's
    even share, in [16, 512] (padding <= experts * (block - 1) rows)."""
    share = max(pairs // (4 * experts), 1)
    return int(min(512, max(16, 1 << (share.bit_length() - 1))))


def swiglu_blocks(x, sizes, gate, up, down, dtype):
    """`swiglu_experts` as blocks of one expert each (MegaBlocks' layout, for XLA:CPU, which
    lowers ragged_dot to a masked dense product over all E experts: E times the FLOPs).
    Each expert's rows start a new block of B (`block_size`); every block is one batched
    matmul with its expert's kernels gathered. Work: (p + E * (B - 1)) rows instead of p."""
    p, e = x.shape[0], gate.shape[0]
    b = block_size(p, e)
    blocks = -(-(p + e * (b - 1)) // b)
    padded = -(-sizes // b) * b  # each expert's rows rounded up to whole blocks
    pad_start = jnp.cumsum(padded) - padded
    start = jnp.cumsum(sizes) - sizes
    expert = jnp.repeat(jnp.arange(e), sizes, total_repeat_length=p)  # each sorted row's
    slot = pad_start[expert] + jnp.arange(p) - start[expert]  # row -> its padded position
    source = jnp.full((blocks * b,), p, jnp.int32).at[slot].set(jnp.arange(p, dtype=jnp.int32))
    block_expert = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), jnp.arange(blocks) * b,
                                                side='right'), e - 1)
    xb = jnp.concatenate([x.astype(dtype), jnp.zeros((1, x.shape[1]), dtype)])[source]
    xb = xb.reshape(blocks, b, -1)
    pick = lambda w: w.astype(dtype)[block_expert]  # noqa: E731  [blocks, in, out]
    h = nn.silu(jnp.einsum('nbd,ndm->nbm', xb, pick(gate))) * jnp.einsum(
        'nbd,ndm->nbm', xb, pick(up))
    y = jnp.einsum('nbm,nmd->nbd', h, pick(down)).reshape(blocks * b, -1)
    return y[slot]


GROUPED = {'ragged_dot': swiglu_experts, 'blocks': swiglu_blocks}


def grouped_impl(name: str) -> str:
    """'auto' -> 'blocks' on CPU, 'ragged_dot' on TPU / GPU (native grouped matmuls)."""
    if name != 'auto':
        return name
    return 'blocks' if jax.default_backend() == 'cpu' else 'ragged_dot'


def dropless(x, experts, weights, kernels, dtype, grouped: str = 'auto'):
    """x [n, d]; experts int32 [n, k]; weights [n, k] -> [n, d] (sort, grouped matmul,
    unsort, weighted sum over the k). grouped: 'ragged_dot' | 'blocks' | 'auto'."""
    n, k = experts.shape
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # pair p of the sorted list is order[p]
    sizes = jnp.bincount(flat, length=kernels[0].shape[0]).astype(jnp.int32)
    y = GROUPED[grouped_impl(grouped)](x[order // k], sizes, *kernels, dtype)
    y = y[jnp.argsort(order)].reshape(n, k, -1)  # back to (token, choice) order
    return jnp.einsum('nkd,nk->nd', y, weights.astype(y.dtype))


def dropless_per_shard(x, experts, weights, kernels, dtype, grouped: str = 'auto'):
    """`dropless` over [b, t, ...] inputs, each device sorting only its own rows: under a mesh
    whose 'batch' axes split b, a `jax.shard_map` over them (the kernels enter whole, gathered
    as FSDP gathers a dense layer's), so no device sorts, or holds, another's tokens. The
    same numbers as one global sort (dropless drops nothing, so the grouping is free)."""
    b, t, d = x.shape
    k = experts.shape[-1]

    def local(x, experts, weights, *kernels):
        n = x.shape[0] * x.shape[1]
        return dropless(x.reshape(n, d), experts.reshape(n, k), weights.reshape(n, k), kernels,
                        dtype, grouped).reshape(x.shape)

    mesh = jax.sharding.get_abstract_mesh()
    axes = None if mesh.empty else nn.logical_to_mesh_axes(('batch',))[0]
    axes = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a
                 and mesh.shape[a] > 1)
    ways = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if ways == 1 or b % ways:
        return local(x, experts, weights, *kernels)
    rows, whole = P(axes), P()
    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, whole, whole, whole),
                         out_specs=rows, check_vma=False)(x, experts, weights, *kernels)


def with_capacity(x, experts, weights, kernels, dtype, capacity: int):
    """x [b, t, d]; experts, weights [b, t, k] -> (y [b, t, d], dropped [b, t]): each row's
    pairs placed first choices first, in token order, C = `capacity` per expert."""
    b, t, k = experts.shape
    e = kernels[0].shape[0]
    chosen = jax.nn.one_hot(jnp.swapaxes(experts, 1, 2), e, dtype=jnp.int32)  # [b, k, t, E]
    slot = jnp.cumsum(chosen.reshape(b, k * t, e), axis=1).reshape(b, k, t, e) - 1
    kept = chosen * (slot < capacity)
    place = jax.nn.one_hot(slot, capacity, dtype=jnp.float32) * kept[..., None]  # [b,k,t,E,C]
    dispatch = place.sum(1)  # [b, t, E, C]
    combine = jnp.einsum('bktec,bkt->btec', place, jnp.swapaxes(weights, 1, 2))
    # each row's slots move to their expert's devices (an all-to-all over the 'expert' mesh
    # axis, GShard's), are computed there, and come back for the combine
    on_experts = ('expert_batch', 'expert', None, 'embed')
    xe = nn.with_logical_constraint(
        jnp.einsum('btec,btd->becd', dispatch.astype(dtype), x.astype(dtype)), on_experts)
    gate, up, down = (w.astype(dtype) for w in kernels)
    h = nn.silu(jnp.einsum('becd,edm->becm', xe, gate)) * jnp.einsum('becd,edm->becm', xe, up)
    ye = nn.with_logical_constraint(jnp.einsum('becm,emd->becd', h, down), on_experts)
    y = jnp.einsum('btec,becd->btd', combine.astype(dtype), ye)
    dropped = k - kept.sum((1, 3)).astype(jnp.float32)
    return y, dropped


class _Kernel(nn.Module):
    """One stacked expert kernel [E, in, out]. `stacked` / `contract` tell LoRA
    (jaxbig.lora) its layout: one adapter pair per expert, contracting the `in` dim."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    std: float
    param_dtype: Any
    stacked: int = 1  # leading dims that index kernels (the experts), not computed with
    contract: int = 1  # dims of each kernel that the matmul contracts

    @nn.compact
    def __call__(self):
        init = nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes)
        return self.param('kernel', init, self.shape, self.param_dtype)


class Experts(nn.Module):
    """The E experts' SwiGLU kernels, stacked: () -> (gate, up [E, d, m], down [E, m, d]),
    at experts/{gate,up,down}/kernel (so int8 quantization and pruning, which read
    'kernel' leaves, see them; the router stays a plain 'router' leaf they leave alone)."""

    experts: int
    embed: int
    dim: int
    out_init_std: float
    param_dtype: Any

    @nn.compact
    def __call__(self):
        e, d, m = self.experts, self.embed, self.dim
        inner, outer = ('expert', 'embed', 'mlp'), ('expert', 'mlp', 'embed')
        return (_Kernel((e, d, m), inner, 0.02, self.param_dtype, name='gate')(),
                _Kernel((e, d, m), inner, 0.02, self.param_dtype, name='up')(),
                _Kernel((e, m, d), outer, self.out_init_std, self.param_dtype, name='down')())


class MoeMlp(nn.Module):
    """[b, t, d] -> ([b, t, d], stats): see the module docstring. decode=True: dropless."""

    spec: MoeSpec
    mlp_dim: int
    out_init_std: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x, decode: bool = False):
        spec = self.spec
        b, t, d = x.shape
        e, k, m = spec.experts, spec.experts_per_token, spec.expert_dim or self.mlp_dim

        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed', None))
        router = self.param('router', init, (d, e), self.param_dtype)
        kernels = Experts(e, d, m, self.out_init_std, self.param_dtype, name='experts')()
        logits = jnp.dot(x.astype(jnp.float32), router.astype(jnp.float32))  # [b, t, E]
        bias = None
        if spec.bias_rate:  # float32 [E], moved by its own rule, never by the gradient
            bias = self.param('router_bias', nn.with_logical_partitioning(
                nn.initializers.zeros, (None,)), (e,), jnp.float32)
        probs, experts, weights = route(logits, k, spec.normalize, bias)
        if spec.dispatch == 'capacity' and not decode:
            y, dropped = with_capacity(x, experts, weights, kernels, self.dtype,
                                       spec.capacity(t))
        else:
            y = dropless_per_shard(x, experts, weights, kernels, self.dtype, spec.grouped)
            dropped = jnp.zeros((b, t), jnp.float32)
        y = y.astype(self.dtype)
        if spec.shared_experts:
            shared = Mlp(spec.shared_experts * m, self.out_init_std, self.dtype,
                         self.param_dtype, name='shared')(x)
            if spec.shared_gate:  # Qwen2-MoE: a per-token sigmoid gate on the shared experts
                g = self.param('shared_gate', nn.with_logical_partitioning(
                    nn.initializers.normal(0.02), ('embed', None)), (d, 1), self.param_dtype)
                shared = shared * jax.nn.sigmoid(jnp.dot(x.astype(self.dtype),
                                                         g.astype(self.dtype)))
            y = y + shared
        stats = dict(probs=probs, chosen=jax.nn.one_hot(experts, e).sum(-2),
                     log_z=jax.nn.logsumexp(logits, axis=-1), dropped=dropped)
        if bias is not None:
            stats['bias'] = bias  # the loss gives it the load deviation as its gradient
        return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), stats
