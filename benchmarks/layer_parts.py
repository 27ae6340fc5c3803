"""Where the step's time goes: one GPT layer's pieces, jaxbig against PyTorch, fwd+bwd.

    python benchmarks/layer_parts.py                 # tiny and GPT-2-small widths
    python benchmarks/layer_parts.py --json

Each piece runs forward and backward (gradients of sum(y**2) with respect to the input and
the piece's parameters) on x [batch, seq, embed] at a preset's training shape:

  attention  gpt.Attention (projections, RoPE, causal attention, output projection) vs
             torch_gpt.Block's (fused QKV Linear, RoPE, F.scaled_dot_product_attention)
  core       the attention core alone, q, k, v -> softmax(q k^T) v with the causal mask:
             layers.causal_attention (query blocks of two einsums each) vs PyTorch's fused
             F.scaled_dot_product_attention (gradients with respect to q, k and v)
  mlp        gpt.Mlp (SwiGLU) vs torch_gpt.Block's (fused gate/up Linear, down Linear)
  norm       layers.RMSNorm vs torch_gpt.RMSNorm
  block      gpt.Block vs torch_gpt.Block (norms, attention, MLP, residuals)

Same shapes and parameter counts; weights are random. PyTorch runs in a child process with
the same environment (see train_step.py). Prints the best-of-`--repeats`
milliseconds and jaxbig's speed relative to PyTorch per piece. Needs '.[bench]'. Nothing
here is a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig.runtime import xla_defaults  # importing jaxbig sets its XLA defaults
from jaxbig.models import gpt, layers
from matmul_layout import best_ms
from train_step import torch_in_child

# (size, batch, seq) as in train_step.py's two headline shapes
SHAPES = [('tiny', 32, 128), ('gpt2_small', 4, 512)]


def jax_pieces(size: str, x):
    """The pieces as flax modules; "core" is None: a function of q, k, v (see time_jax)."""
    s = gpt.SIZES[size]
    heads, embed, mlp = s['num_heads'], s['embed_dim'], s['mlp_dim']
    f32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)
    return {
        'attention': gpt.Attention(heads, embed // heads, 10000.0, 0.02, **f32),
        'core': None,
        'mlp': gpt.Mlp(mlp, 0.02, **f32),
        'norm': layers.RMSNorm(**f32),
        'block': gpt.Block(heads, embed // heads, mlp, 0.0, 10000.0, 1e-6, 0.02, **f32),
    }


def time_jax(size: str, batch: int, seq: int, steps: int, repeats: int) -> dict:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, seq, gpt.SIZES[size]
                                                          ['embed_dim'])), jnp.float32)
    out, heads = {}, gpt.SIZES[size]['num_heads']
    for name, module in jax_pieces(size, x).items():
        kwargs = {'train': True} if name == 'block' else {}
        if name == 'core':  # q, k, v [batch, seq, heads, head_dim] from x; no parameters
            qkv = [x.reshape(*x.shape[:2], heads, -1) * (i + 1) for i in range(3)]
            core = jax.jit(jax.value_and_grad(
                lambda q, k, v: jnp.sum(layers.causal_attention(q, k, v) ** 2), argnums=(0, 1, 2)))
            out[name] = best_ms(lambda: core(*qkv), steps, repeats)
            continue
        params = module.init(jax.random.key(0), x, **kwargs)

        def loss(p, x, module=module, kwargs=kwargs):
            y = module.apply(p, x, **kwargs)
            return jnp.sum((y[0] if isinstance(y, tuple) else y) ** 2)

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        out[name] = best_ms(lambda: grad(params, x), steps, repeats)
    return out


def time_torch(size: str, batch: int, seq: int, steps: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_gpt

    s = gpt.SIZES[size]
    heads, embed, mlp = s['num_heads'], s['embed_dim'], s['mlp_dim']
    torch.manual_seed(0)
    block = torch_gpt.Block(embed, heads, mlp)
    rope = torch_gpt.GPT(256, 1, heads, embed, mlp, max_len=seq)
    sin, cos = rope.sin, rope.cos
    x = torch.randn(batch, seq, embed, requires_grad=True)

    def attention(x):
        b, t, d = x.shape
        q, k, v = block.qkv(x).view(b, t, 3, heads, d // heads).unbind(2)
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))
        q, k = torch_gpt.rope(q, sin, cos), torch_gpt.rope(k, sin, cos)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return block.out(h.transpose(1, 2).reshape(b, t, d))

    def swiglu(x):
        gate, up = block.gate_up(x).chunk(2, dim=-1)
        return block.down(F.silu(gate) * up)

    b, t, d = x.shape
    qkv = [(x.detach().view(b, t, heads, d // heads) * (i + 1)).transpose(1, 2).contiguous()
           .requires_grad_() for i in range(3)]

    def core(_):
        return F.scaled_dot_product_attention(*qkv, is_causal=True)

    pieces = {'attention': attention, 'core': core, 'mlp': swiglu, 'norm': block.attn_norm,
              'block': lambda x: block(x, sin, cos)}
    out = {}
    for name, fn in pieces.items():
        def step(fn=fn):
            x.grad = None
            for t in qkv:
                t.grad = None
            block.zero_grad(set_to_none=True)
            (fn(x) ** 2).sum().backward()
        out[name] = best_ms(step, steps, repeats)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', action='store_true')
    parser.add_argument('--torch-only', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:  # the child process: PyTorch's pieces, one JSON line
        print(json.dumps({size: time_torch(size, batch, seq, args.steps, args.repeats)
                          for size, batch, seq in SHAPES}))
        return
    torch_ms = torch_in_child(__file__, sys.argv[1:])
    rows = {}
    for size, batch, seq in SHAPES:
        j = time_jax(size, batch, seq, args.steps, args.repeats)
        t = torch_ms[size]
        rows[size] = dict(batch=batch, seq=seq,
                          pieces={k: dict(jaxbig_ms=j[k], torch_ms=t[k], ratio=t[k] / j[k])
                                  for k in j})
    if args.json:
        print(json.dumps(rows))
        return
    for size, r in rows.items():
        print(f'{size}: x [{r["batch"]}, {r["seq"]}, {gpt.SIZES[size]["embed_dim"]}], fwd+bwd')
        for name, p in r['pieces'].items():
            print(f'  {name:10s} jaxbig {p["jaxbig_ms"]:8.2f} ms   torch {p["torch_ms"]:8.2f} ms'
                  f'   jaxbig / torch speed {p["ratio"]:.2f}x')


if __name__ == '__main__':
    xla_defaults.restart_with_malloc_defaults()  # as `jaxbig train` runs (jaxbig/runtime/)
    main()
