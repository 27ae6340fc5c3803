"""Sizes of jaxbig's GPT (jaxbig.models.gpt): the preset shapes (SIZES), parameter counts
(total, and active per token for a Mixture-of-Experts model) and training FLOPs per token,
as MaxText counts them (planning, benchmarks and `jaxbig plan` read these).

Preset shapes (`SIZES`); vocab_size is the tokenizer's business and is not part of them.
Non-embedding parameter counts:

    name         layers  heads  embed_dim  mlp_dim   params (non-embedding)
    tiny              4      4        128      384     0.85 M
    small             6      4        256     1024     6.3 M
    gpt2_small       12     12        768     2048    85 M
    gpt2_medium      24     16       1024     2816   308 M
    1b               16     16       2048     8192   1.07 B
    llama_1b         16  32/8kv      2048     8192   0.97 B   (1.50 B with llm.py's untied
    llama_8b         32  32/8kv      4096    14336   6.98 B    128k vocab: 8.03 B,
    llama_70b        80  64/8kv      8192    28672   68.5 B    70.6 B; experiments/llm.py)

SwiGLU has three [embed, mlp] matrices, so mlp_dim ~= 2/3 of a GELU MLP's 4 * embed_dim
(GPT-2 small: 2/3 * 3072 = 2048) keeps the parameter count of the GPT-2 original.
"""

import math

import jax

SIZES = {
    'tiny': dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=384),
    'small': dict(num_layers=6, num_heads=4, embed_dim=256, mlp_dim=1024),
    'gpt2_small': dict(num_layers=12, num_heads=12, embed_dim=768, mlp_dim=2048),
    'gpt2_medium': dict(num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=2816),
    '1b': dict(num_layers=16, num_heads=16, embed_dim=2048, mlp_dim=8192),
    # Llama-3-shaped (grouped-query attention, 8 key-value heads); experiments/llm.py adds
    # the 128,256-token vocabulary, an untied head and rope_base 500,000.
    'llama_1b': dict(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048, mlp_dim=8192),
    'llama_8b': dict(num_layers=32, num_heads=32, num_kv_heads=8, embed_dim=4096, mlp_dim=14336),
    'llama_70b': dict(num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192,
                      mlp_dim=28672),
}


def count_params(params) -> int:
    """Number of scalars in a parameter tree (arrays, boxed arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def active_params(model, params) -> int:
    """Parameters one token's forward uses: count_params less the experts it does not
    visit ((experts - k) / experts of every routed expert kernel); = count_params when the
    model has no Mixture-of-Experts layers."""
    spec = getattr(model, 'moe_spec', None)
    total = count_params(params)
    if not spec:
        return total
    routed = sum(math.prod(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
                 if 'experts' in [getattr(k, 'key', None) for k in path])
    return total - routed * (spec.experts - spec.experts_per_token) // spec.experts


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
    (a windowed layer is counted as a full causal one: an upper bound). A Mixture-of-Experts
    layer counts its active weights: 3 * embed * expert_dim * (k + shared_experts) plus the
    router's embed * experts (+ embed for a shared_gate) (model.moe, jaxbig.models.moe);
    its first_dense layers count
    the dense MLP.
    """
    m, hd = model, model.resolved_head_dim
    mlp_mats = 3 if m.mlp in ('swiglu', 'geglu') else 2  # gated: gate, up, down
    dense = mlp_mats * m.embed_dim * m.mlp_dim
    mlps = m.num_layers * dense
    spec = getattr(m, 'moe_spec', None)
    if spec:  # the first_dense layers keep the dense MLP
        active = spec.experts_per_token + spec.shared_experts
        moe = 3 * m.embed_dim * (spec.expert_dim or m.mlp_dim) * active + m.embed_dim * (
            spec.experts + int(spec.shared_gate))  # the router (+ Qwen2-MoE's shared gate)
        mlps = spec.first_dense * dense + (m.num_layers - spec.first_dense) * moe
    weights = m.num_layers * 2 * m.embed_dim * (m.num_heads + m.resolved_kv_heads) * hd + mlps
    weights += m.embed_dim * m.vocab_size
    attention = 3 * m.num_layers * 4 * seq_len * m.num_heads * hd / 2
    return float(6 * weights + attention)
