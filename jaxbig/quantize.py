"""int8 weight-only quantization for inference: per-output-channel symmetric int8 kernels.

A Dense kernel W (any leaf named 'kernel' with >= 2 dims) becomes `QTensor(q, scale)`:

    scale = max|W| over the contracted (input) axes / 127      float32, those axes kept as 1
    q     = round(W / scale) clipped to [-127, 127]            int8, W's shape

and is dequantised on the fly, `W ~= q * scale`, inside the compiled inference function
(`dequantize(params)` at the top of `jaxbig.generate._generate` and of the eval step
below), so only int8 values and the scales are held between calls. Embeddings, norm
scales and biases stay float (the tied unembedding is the embedding). Contracted axes:
the first `contract` axes after the leading stacked axes (a 'layers' key in the path: the
GPT's nn.scan; an 'experts' key: a Mixture-of-Experts layer's [experts, in, out] kernels), with contract = 2 for the GPT's attention output
projection 'out' ([heads, head_dim] -> embed) and 1 for every other kernel.

    jaxbig quantize --workdir runs/lm     # report: kernel bytes and val loss
                                          # (the command: jaxbig/commands/quantize.py)
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbig.models.layout import STACKS

CONTRACT = {'out': 2}  # kernels whose input spans more than one axis, by module name


@flax.struct.dataclass
class QTensor:
    """int8 values q [*shape] and float32 scales (shape with contracted axes set to 1)."""

    q: jax.Array
    scale: jax.Array

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self, dtype=jnp.float32):
        return (self.q.astype(jnp.float32) * self.scale).astype(dtype)


def _keys(path) -> list[str]:
    return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def contracted_axes(path, ndim: int) -> tuple[int, ...]:
    keys = _keys(path)
    lead = bool(set(STACKS) & set(keys)) + ('experts' in keys)  # stacked layers; experts
    contract = CONTRACT.get(keys[-2] if len(keys) > 1 else '', 1)
    return tuple(range(lead, lead + contract))


def quantize_array(w, axes) -> QTensor:
    """Symmetric int8 with one scale per index of the axes not in `axes`."""
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return QTensor(q, scale.astype(jnp.float32))


def _is_kernel(path, x) -> bool:
    keys = _keys(path)
    return bool(keys) and keys[-1] == 'kernel' and np.ndim(x) >= 2


def quantize_params(params):
    """Replaces every Dense kernel of a params tree by a QTensor; other leaves unchanged
    (logical-partitioning boxes are dropped)."""

    def f(path, x):
        return quantize_array(x, contracted_axes(path, np.ndim(x))) if _is_kernel(path, x) else x

    return jax.tree_util.tree_map_with_path(f, nn.unbox(params))


def dequantize(params):
    """QTensor leaves -> float32 arrays (a no-op on an unquantized tree); call inside jit."""
    return jax.tree.map(
        lambda x: x.dequantize() if isinstance(x, QTensor) else x,
        params,
        is_leaf=lambda x: isinstance(x, QTensor),
    )


def kernel_bytes(params) -> int:
    """Bytes of the Dense kernels (QTensor: int8 values + float32 scales)."""
    total = 0
    is_q = lambda x: isinstance(x, QTensor)
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(params), is_leaf=is_q)
    for path, x in leaves[0]:
        if isinstance(x, QTensor):
            total += x.q.size * x.q.dtype.itemsize + x.scale.size * x.scale.dtype.itemsize
        elif _is_kernel(path, x):
            total += x.size * x.dtype.itemsize
    return int(total)


def eval_loss(config, model, params, *, num_batches: int = 0, batch_size: int = 0) -> float:
    """Validation loss (the run's own loss on its val split: the examples evals.val scores,
    each once), aggregated as sums and counts (token-weighted for language models).
    `num_batches` > 0 scores only the first num_batches batches of them."""
    from jaxbig import aggregate, data, losses

    val = (config.get('evals') or {}).get('val', {})
    batch_size = batch_size or val.get('batch_size', 0) or config.train.batch_size
    pipe = data.build_pipeline(config.data, split=config.data.val_split,
                               batch_size=batch_size, seed=0, one_pass=True,
                               num_examples=val.get('num_examples', 0))
    loss_module = losses.get_loss_module(config.loss.name)
    loss_fn = losses.bind(loss_module, config.loss)

    @jax.jit
    def step(p, batch):
        return loss_fn(model.apply, dequantize(p), batch, {}, config.loss, train=False)[1]['loss']

    batches = min(num_batches, pipe.num_batches) if num_batches else pipe.num_batches
    total = None
    for i in range(batches):
        total = aggregate.add(total, jax.device_get(step(params, pipe.get_batch(i))))
    return aggregate.host_values(total)


def report(workdir: str, step: int | None = None, num_batches: int = 0) -> dict:
    """Kernel bytes float vs int8 and validation loss float vs int8 of a trained run."""
    from jaxbig import run as run_lib

    run = run_lib.load_run(workdir, step)
    config, model, params, step = run.config, run.model, run.params, run.step
    qparams = quantize_params(params)
    out = dict(step=step, kernel_bytes_float=kernel_bytes(params),
               kernel_bytes_int8=kernel_bytes(qparams))
    out['kernel_bytes_ratio'] = out['kernel_bytes_float'] / out['kernel_bytes_int8']
    out['val_loss_float'] = eval_loss(config, model, params, num_batches=num_batches)
    out['val_loss_int8'] = eval_loss(config, model, qparams, num_batches=num_batches)
    out['val_loss_change'] = out['val_loss_int8'] / out['val_loss_float'] - 1
    return out
