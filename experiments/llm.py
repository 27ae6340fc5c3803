r"""Llama-3-shaped language models (1B, 8B, 70B) and Mixture-of-Experts shapes (Mixtral-8x7B,
Qwen3-30B-A3B) for planning and pod launches.

Grouped-query attention (8 key-value heads), SwiGLU, RMSNorm, RoPE at base 500,000, an
untied head over a 128,256-token vocabulary, bfloat16 compute on float32 parameters,
nn.scan over layers with full remat, FSDP over every device. The shapes are
`jaxbig.models.gpt.SIZES['llama_<size>']`:

    size  layers  heads/kv  embed   mlp     parameters
    1b        16    32/8     2048    8192   1.50 B
    8b        32    32/8     4096   14336   8.03 B
    70b       80    64/8     8192   28672   70.6 B

Plan before renting (nothing is trained or allocated; see jaxbig/planning):

    jaxbig plan --config experiments/llm.py:size=8b --target v5p-256 --mesh data=2,fsdp=64
    jaxbig plan --config experiments/llm.py:size=70b --target h100x8 --mesh fsdp=8 \
        --config.train.batch_size=8 --json

Train (the embedded corpus tokenizes as bytes, which fit in the 128k vocabulary; pass a
real tokenizer with --config.data.tokenizer=PATH/tokenizer.json, e.g. an imported Llama 3's):

    jaxbig train --config experiments/llm.py:size=1b,seq=2048,batch=8 --workdir runs/llm1b

Arguments (`experiments/llm.py:key=value,...`): size (1b | 8b | 70b | mixtral_8x7b |
qwen3_30b_a3b), steps, batch (global batch in sequences), seq (tokens per sequence), data
(as in experiments/lm.py), lr.

Mixture-of-Experts (`model.moe`, jaxbig/models/moe.py; dropless, the same recipe otherwise):

    size           layers  heads/kv  embed  experts x dim   top-k  vocab    parameters (active)
    mixtral_8x7b       32    32/8     4096    8 x 14336       2    32,000   46.7 B (12.9 B)
    qwen3_30b_a3b      48    32/4     2048  128 x 768         8   151,936   30.5 B (3.35 B)

Recommended meshes: what `jaxbig plan` printed (v5p through libtpu's TPU compiler; H100
compiled on 8 host CPU devices standing in, so its temporaries are XLA:CPU's). Step time
and tokens/s at the published bf16 peak and 40 % MFU; peak = per-device arguments +
outputs - donated + temporaries.

With attention='auto' (the default), TPU plans run the splash kernel (jaxbig/models/splash.py),
and loss.logits_chunk=2048 (the default since 2026-12-07) applies the head to 2,048 positions
at a time, so the float32 [rows, seq, vocab] logits (8.4 GB per device at 2 x 8192 x 128k)
never exist at once; rows marked einsum / no chunk were measured with
--config.model.attention=einsum / --config.loss.logits_chunk=0:

    target   size mesh      batch x seq  knobs (beyond the defaults)  peak/device  est. step
    v5p-256  8b   data=2,fsdp=64  256 x 8192  -                       13.7 GB    4.59 s, 457 k tok/s
                            (sends 63.5 GB per device per step, 1.33x the floor; no chunk:
                            24.4 GB, 49.9 GB sent; einsum, no chunk: 31.2 GB)
    v5p-256  70b  data=2,fsdp=64  256 x 8192  -                       61.1 GB   40.1 s, 52.3 k tok/s
                            (no accumulation; sends 521 GB, 1.24x the floor; no chunk: 67.2 GB,
                            494 GB; fsdp=128, no chunk: 63.9 GB, 872 GB sent, 2.08x)
             70b  einsum, no chunk: fsdp=128, grad_accum_steps=2, 54.0 GB (data=2,fsdp=64:
                            69.6 GB); without accumulation 97.9 GB > 95 GB, does not fit
    MaxText 0.2.5 with its splash kernel, same shapes: 15.1 GB (8b) and 43.4 GB (70b). The 8b
    plan is under it. 70b's XLA temporaries (47.8 GB) exceed the plan's analytic estimate
    (34.6 GB: each layer's bf16 input kept for the backward, 21.5 GB, one layer's recompute,
    one logits chunk, a parameter-sized gradient) because libtpu's temp_size_in_bytes also
    holds the fragmentation between its buffers: its own log (a compile dumped with
    LIBTPU_INIT_ARGS=--xla_jf_dump_to=DIR) gives a 35.86 GB heap plus 11.98 GB of
    fragmentation. The heap itself is the estimate plus a bf16 copy of all 80 layers'
    weights (2.1 GB) that XLA hoists out of the layer loop. The plan prints the compiler's
    own peak beside jaxbig's (8b: 9.9 GB against 13.7; 70b: 48.6 GB against 61.1, 5.2 GB
    above MaxText's 43.4); the peaks in these tables are
    jaxbig's, the upper bound (whether the MaxText figures above count the fragmentation
    is not known).
    On the Python 3.12 stack (jax 0.12.1, libtpu 0.0.52; the same commands, 2026-12-07):
    8b 10.0 GB (sends 61.0 GB, 1.28x), 70b 49.1 GB (512 GB, 1.22x), each compile about a
    minute instead of five. libtpu 0.0.52 no longer counts the fragmentation in its
    temporaries, so jaxbig's figure and the compiler's peak (9.9 / 48.6 GB, unchanged)
    agree; 70b stays 5.2 GB above MaxText's 43.4 GB. Tried there: logits_chunk=1024 (the
    same 49.1 GB, 545 GB sent) and an optimization_barrier on each scanned layer's
    parameters, against the hoisted bf16 copy of all layers' weights (no change).

    h100x8   8b   fsdp=8     32 x 8192   grad_accum_steps=4           47.6 GB      4.26 s, 61.5 k tok/s
                            (without accumulation: 106.6 GB > 80 GB, with or without
                            logits_chunk: the CPU stand-in compiles attention='auto' as the
                            einsum path, whose [heads, seq, seq] probabilities dominate)
    v5p-256  mixtral_8x7b  fsdp=128  256 x 8192  -                46.1 GB      7.4 s, 283 k tok/s
    v5p-256  qwen3_30b_a3b fsdp=128  256 x 8192  -                42.2 GB      2.49 s, 842 k tok/s
             (FLOPs on active parameters: 82.9 and 27.9 GFLOP per token; compiled
             2026-12-07 with libtpu 0.0.42 and no logits chunk (--config.loss.
             logits_chunk=0 reproduces them); dropless through ragged_dot, each device
             sorting its own rows; collectives 738 and 477 GB sent per device per step)
    v5p-256  mixtral_8x7b  fsdp=16 x expert=8, dispatch=capacity, grad_accum_steps=2:
                  80.1 GB, fits, but sends 13.8 TB per device per step (12.6 TB of it
                  all-reduces beside 384 all-to-alls): GSPMD's lowering of the GShard
                  einsums over fsdp x expert is far from the 68 GB floor; use fsdp=128
                  (without accumulation: 130 GB of temporaries, does not fit)
    h100x8   mixtral_8x7b  does not fit: fsdp=8 holds 70 GB of parameters + optimizer
                  state per device before activations (153.7 GB peak at 8 x 8192, grad
                  accumulation 4); plan 16+ GPUs
    h100x8   70b  does not fit: parameters + optimizer state alone are 88.2 GB per device
                  even with mu_dtype=bfloat16; plan 16+ GPUs, attention='cudnn' (the einsum
                  path keeps [heads, seq, seq] probabilities: ~17 GB per 8192-token row)

logits_chunk against chunk size (8b above): each chunk's call gathers the head's weights
afresh, so smaller chunks send more. 1024: 13.7 GB, 80.2 GB sent (1.68x); 2048: 13.7 GB,
63.5 GB (1.33x); 4096: 16.4 GB, 55.1 GB (1.16x). Gathering the head once before the chunks
instead sends 52.0 GB (1,024) but keeps the gathered float32 head and its gradient alive
(18.1 GB; 70b: 69.4 GB against 61.1), so jaxbig gathers per chunk.

Context length (8b, v5p-256, data=2,fsdp=64, splash, full remat, one sequence per device):

    seq      batch (tokens/step)   peak/device        sent/step (x floor)   est. step
    8192     256 (2.1 M)           13.7 GB            63.5 GB (1.33x)       4.59 s
    32768    128 (4.2 M)           25.3 GB            114 GB (2.38x)        12.6 s
    131072   128 (16.8 M)          92.0 GB: fits,     315 GB (6.60x)        106 s
                                   3 % headroom

Each device holds one sequence, the fewest data x fsdp sharding allows (jaxbig has no
sequence / context parallelism, so a shorter batch cannot split over 128 chips). What grows
with length: each layer's bf16 input kept for the backward (32 layers x 4096 x 2 bytes =
256 kB per token: 8.6 GB at 32k, 34 GB at 128k) and the one recomputed layer's activations;
splash keeps the attention itself linear in length. The traffic grows because each
2,048-token logits chunk gathers the head again (64 chunks at 128k); at 128k,
--config.loss.logits_chunk=8192 would send less but add about 6 GB of logits (1 x 6,144 more
positions x 128k x 8 bytes), past the 95 GB. XLA's temporaries at 128k (90.5 GB) exceed the
plan's analytic estimate (55.2 GB), as 70b's do above.

Collectives per device per step on v5p-256 (the plan's table; bytes a ring algorithm sends,
against the least the parameters need: bf16 gathers for forward and backward of each
micro-batch plus one gradient reduce-scatter and the data all-reduce of a shard; libtpu
0.0.42, einsum attention, no logits chunk, measured 2026-12-07; splash leaves the 8b figures
unchanged):

    8b   fsdp=128            291 gathers done as all-reduces + 197 all-reduces:
                             92.9 GB against 47.8 GB (1.94x), peak 31.1 GB
    8b   data=2,fsdp=64      578 all-gathers, 224 reduce-scatters, 71 all-reduces:
                             49.9 GB against 47.7 GB (1.05x), peak 31.2 GB
    70b  fsdp=128, accum 2   1.74 TB against 700 GB (2.49x), peak 54.0 GB
    70b  data=2,fsdp=64, accum 2
                             3,686 all-gathers, 800 reduce-scatters, 650 all-reduces:
                             988 GB against 697 GB (1.42x), peak 69.6 GB

The program's gathers are all-gathers (XLA's SPMD partitioner emits them); libtpu's
all-gather decomposer rewrites every all-gather whose group is the whole slice into an
all-reduce of a zero buffer holding the local shard (twice the traffic: even an explicit
lax.all_gather in shard_map, from a ten-line pure-JAX program), and keeps it when the group
leaves a factor out. The gradient reduce-scatters are there in both (libtpu wraps them in
`all-reduce-scatter` fusions, which the plan reads as reduce-scatters). Hence on a whole
TPU slice prefer `--mesh data=2,fsdp=N/2` (hybrid sharding: the state twice per device, 0.75
GB more for 8b, 6.6 GB for 70b). Payload per device: 8b 34.2 GB and 70b (accum 2) 712 GB,
against MaxText 0.2.5's 44.0 GB and 830 GB compiled beside jaxbig for the same shapes.

`jaxbig plan` itself (2-core CPU shared with other jobs): v5p-256 compiles took 285 s (8b)
and 309-329 s (70b), peak host memory 3.8-4.0 GB; the 8-device CPU stand-in 19-28 s, 1.4 GB.
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.gpt import SIZES

PRESETS = ('1b', '8b', '70b', 'mixtral_8x7b', 'qwen3_30b_a3b')
VOCAB = 128256  # Llama 3's tokenizer
LR = {'1b': 3e-4, '8b': 3e-4, '70b': 1.5e-4,  # Llama 3's peak learning rates
      'mixtral_8x7b': 3e-4, 'qwen3_30b_a3b': 3e-4}
# Mixture-of-Experts shapes (the published configs; jaxbig.models.moe), over the same recipe
MOE = {
    # 32 layers of Mistral-7B's attention, 8 experts of 14,336, top-2: 46.7 B, 12.9 B active
    'mixtral_8x7b': dict(SIZES['llama_8b'], vocab_size=32000, rope_base=1e6,
                         moe=dict(experts=8, experts_per_token=2)),
    # 48 layers, 32 / 4 heads of 128, q/k norms, 128 experts of 768, top-8 renormalised:
    # 30.5 B, 3.3 B active
    'qwen3_30b_a3b': dict(num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128,
                          embed_dim=2048, mlp_dim=6144, qk_norm='head', vocab_size=151936,
                          rope_base=1e6, norm_eps=1e-6,
                          moe=dict(experts=128, experts_per_token=8, expert_dim=768)),
}


def get_config(arg=None):
    arg = parse_arg(arg, size='8b', steps=1000, batch=256, seq=8192, data='pystdlib', lr=0.0)
    if arg.size not in PRESETS:
        raise ConfigError(f'experiments/llm.py: size={arg.size!r}, expected one of {PRESETS}')
    c = ml_collections.ConfigDict()
    shape = dict(MOE.get(arg.size) or SIZES[f'llama_{arg.size}'])
    moe = defaults.moe(**shape.pop('moe', {}))
    c.model = defaults.gpt(
        shape,
        vocab_size=shape.pop('vocab_size', VOCAB),
        tie_embeddings=False,
        rope_base=shape.pop('rope_base', 500000.0),
        norm_eps=shape.pop('norm_eps', 1e-5),
        moe=moe,
        scan_layers=True,
        remat='full',  # keep each layer's input only; 'dots' keeps matmul outputs too
        dtype='bfloat16',
        param_dtype='float32',
        attention='auto',  # splash on TPU, cudnn on NVIDIA GPUs, einsum on CPU (models/splash.py)
    )
    c.data = defaults.lm_data(arg.data, arg.seq)
    # the head on 2,048 positions at a time: the float32 [rows, seq, vocab] logits (8.4 GB
    # per device at 2 x 8192 x 128k) never exist at once (losses/autoregressive.py)
    c.loss = defaults.lm_loss(logits_chunk=min(2048, arg.seq))
    c.optimizer = defaults.lm_optimizer(lr=arg.lr or LR[arg.size], clip_norm=1.0)
    c.parallel = defaults.parallel(data=1, fsdp=-1)
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch)
    c.evals = defaults.lm_evals(num_examples=8 * arg.batch)
    return c
