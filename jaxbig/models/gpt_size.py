"""Sizes of jaxbig's GPT (jaxbig.models.gpt): parameter counts and training FLOPs per
token, as MaxText counts them (planning, benchmarks and `jaxbig plan` read these)."""

import math

import jax


def count_params(params) -> int:
    """Number of scalars in a parameter tree (arrays, boxed arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, counted the way MaxText counts them.

    6 * (matmul weights per token) + causal attention:
      weights:   num_layers * (2 * embed * (heads + kv_heads) * head_dim
                              + (3 or 2 for gelu) * embed * mlp)
                 + embed * vocab   (the unembedding matmul, counted once, tied or not;
                                    the embedding lookup is a gather: no FLOPs)
      attention: 3 * num_layers * 4 * seq_len * heads * head_dim / 2
                 (q.k and p.v, 2 FLOPs per multiply-add, x3 for fwd+bwd, halved for the
                 causal mask as MaxText's calculate_tflops_training_per_device does since
                 2025, following Megatron-LM and NeMo; nanoGPT's estimate_mfu does not halve)
    Norms, RoPE, softmax and the optimizer are not counted; nor are sliding windows
    (a windowed layer is counted as a full causal one: an upper bound).
    """
    m, hd = model, model.resolved_head_dim
    mlp_mats = 3 if m.mlp in ('swiglu', 'geglu') else 2  # gated: gate, up, down
    weights = m.num_layers * (2 * m.embed_dim * (m.num_heads + m.resolved_kv_heads) * hd
                              + mlp_mats * m.embed_dim * m.mlp_dim)
    weights += m.embed_dim * m.vocab_size
    attention = 3 * m.num_layers * 4 * seq_len * m.num_heads * hd / 2
    return float(6 * weights + attention)
