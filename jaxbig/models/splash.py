"""Splash attention: the Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`)
as the GPT's training-path attention (`model.attention='splash'`), so the [batch, heads, seq,
seq] scores are never materialised.

    splash_attention(q, k, v, segment_ids=None, window=0, scale=None, softcap=0.0)
        q [b, t, h, d], k, v [b, t, h_kv, d] -> [b, t, h, d]

The same function as `attention.causal_attention`: causal, a query sees only keys of its own
segment when segment_ids [b, t] are given (packed examples), a static sliding `window`
(query i sees keys i - window + 1 .. i), logits q.k * scale (default 1/sqrt(d)) soft-capped
when softcap > 0, float32 softmax inside the kernel. Grouped-query attention is the kernel's
multi-query form run once per key-value head (vmapped, as MaxText does): no repeated k, v.

Sharding: inside a mesh whose batch axes (data, fsdp, expert) or 'tensor' are split, the
kernel runs under `jax.shard_map` on each device's rows (batch) and key-value heads (tensor,
when it divides them); a Pallas call cannot be partitioned by GSPMD.

Off TPU the kernel runs in Pallas's interpreter (exact, slow: for tests on CPU). Lengths
that are not a multiple of the kernel's 128-token blocks are padded at the end. A traced
per-layer window (Gemma 2 / 3's local / global pattern inside a scan) is refused: the
kernel's masks are static.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

BLOCKS = (512, 256, 128)  # the kernel's query / key blocks: the largest dividing seq
LANES = 128  # the kernel's blocks are multiples of the TPU's 128 lanes


def check(window) -> None:
    if not isinstance(window, (int, np.integer)):
        raise ValueError("model.attention='splash': a per-layer window pattern (local / global "
                         "layers in a scan) is not supported; use attention='einsum'")


def _kernel(seq: int, group: int, window: int, softcap: float, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if window:
        mask = sm.LocalMask((seq, seq), window_size=(window - 1, 0), offset=0)
    else:
        mask = sm.CausalMask((seq, seq))
    b = next(size for size in BLOCKS if seq % size == 0)
    blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                           block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    # built in the trace that uses it (its mask tables become that trace's values: a kernel
    # cached across traces would leak them)
    return sk.make_splash_mqa_single_device(
        sm.MultiHeadMask([mask] * group), block_sizes=blocks,
        attn_logits_soft_cap=softcap or None, interpret=interpret)


def _platform() -> str:
    """The platform the program is compiled for: the devices of the mesh set with
    jax.set_mesh (`jaxbig plan` compiles for TPU from a CPU host), else the default one."""
    device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
    return getattr(device, 'platform', None) or jax.default_backend()


def auto(seq: int, window, dtype) -> str:
    """model.attention='auto': what the platform runs fastest: 'splash' on TPU (when the
    sequence is a multiple of 128 and the window static), 'cudnn' on NVIDIA GPUs in bf16 /
    fp16 ('xla' in float32, which cuDNN's kernel does not take), else 'einsum' (CPU)."""
    platform = _platform()
    if platform == 'tpu' and seq % LANES == 0 and isinstance(window, (int, np.integer)):
        # (shorter or ragged lengths would be padded to 128: the einsum path is cheaper there)
        return 'splash'
    if platform in ('gpu', 'cuda'):
        return 'cudnn' if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else 'xla'
    return 'einsum'


def _local(q, k, v, segment_ids, window, scale, softcap):
    """One device's rows: q [b, t, h, d], k, v [b, t, kv, d] -> [b, t, h, d]. A length that
    is not a multiple of the kernel's 128-token blocks is padded at the end and cut again:
    causal, no real query sees a padding key (padding gets a segment of its own)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    seq = q.shape[1]
    pad = -seq % LANES
    if pad:
        widen = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))  # noqa: E731
        if segment_ids is not None:
            segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)),
                                  constant_values=jnp.iinfo(jnp.int32).max)
        out = _local(widen(q), widen(k), widen(v), segment_ids, window, scale, softcap)
        return out[:, :seq]
    b, t, h, d = q.shape
    kv = k.shape[2]
    kernel = _kernel(t, h // kv, int(window), float(softcap), _platform() != 'tpu')
    # [b, kv, group, t, d] queries against [b, kv, t, d] keys and values
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    kg, vg = (x.transpose(0, 2, 1, 3) for x in (k, v))
    if segment_ids is None:
        per_head = jax.vmap(kernel, in_axes=(0, 0, 0))
        out = jax.vmap(per_head)(qg, kg, vg)
    else:
        ids = segment_ids.astype(jnp.int32)
        per_head = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)),
                            in_axes=(0, 0, 0, None))
        out = jax.vmap(per_head)(qg, kg, vg, ids)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def splash_attention(q, k, v, segment_ids=None, window=0, scale: float | None = None,
                     softcap: float = 0.0):
    """See the module docstring."""
    from jax.sharding import PartitionSpec as P

    from jaxbig import parallel

    check(window)
    scale = scale or 1.0 / math.sqrt(q.shape[-1])
    run = functools.partial(_local, window=window, scale=scale, softcap=softcap)
    mesh = jax.sharding.get_abstract_mesh()
    sizes = dict(mesh.shape) if not mesh.empty else {}
    batch = tuple(a for a in parallel.BATCH_AXES if sizes.get(a, 1) > 1)
    if q.shape[0] % math.prod(sizes[a] for a in batch):  # a row the mesh cannot split
        batch = ()  # (the one-row example of the model's init): every device runs all rows
    heads = 'tensor' if sizes.get('tensor', 1) > 1 and k.shape[2] % sizes['tensor'] == 0 else None
    if not batch and heads is None:
        return run(q, k, v, segment_ids)
    rows = P(batch or None, None, heads, None)
    seg = P(batch or None, None)
    if segment_ids is None:
        fn = jax.shard_map(lambda q, k, v: run(q, k, v, None), mesh=mesh,
                           in_specs=(rows, rows, rows), out_specs=rows, check_vma=False)
        return fn(q, k, v)
    fn = jax.shard_map(run, mesh=mesh, in_specs=(rows, rows, rows, seg), out_specs=rows,
                       check_vma=False)
    return fn(q, k, v, segment_ids)
