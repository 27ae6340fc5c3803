r"""Llama-3-shaped language models (1B, 8B, 70B) for planning and pod launches.

Grouped-query attention (8 key-value heads), SwiGLU, RMSNorm, RoPE at base 500,000, an
untied head over a 128,256-token vocabulary, bfloat16 compute on float32 parameters,
nn.scan over layers with full remat, FSDP over every device. The shapes are
`jaxbig.models.gpt.SIZES['llama_<size>']`:

    size  layers  heads/kv  embed   mlp     parameters
    1b        16    32/8     2048    8192   1.50 B
    8b        32    32/8     4096   14336   8.03 B
    70b       80    64/8     8192   28672   70.6 B

Plan before renting (nothing is trained or allocated; see jaxbig/planning):

    jaxbig plan --config experiments/llm.py:size=8b --target v5p-256 --mesh fsdp=-1
    jaxbig plan --config experiments/llm.py:size=70b --target h100x8 --mesh fsdp=8 \
        --config.train.batch_size=8 --json

Train (the embedded corpus tokenizes as bytes, which fit in the 128k vocabulary; pass a
real tokenizer with --config.data.tokenizer=PATH/tokenizer.json, e.g. an imported Llama 3's):

    jaxbig train --config experiments/llm.py:size=1b,seq=2048,batch=8 --workdir runs/llm1b

Arguments (`experiments/llm.py:key=value,...`): size (1b | 8b | 70b), steps, batch (global
batch in sequences), seq (tokens per sequence), data (as in experiments/lm.py), lr.

Recommended meshes (the figures `jaxbig plan` printed; PLAN_FIGURES below).
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.gpt import SIZES

PRESETS = ('1b', '8b', '70b')
VOCAB = 128256  # Llama 3's tokenizer
LR = {'1b': 3e-4, '8b': 3e-4, '70b': 1.5e-4}  # Llama 3's peak learning rates


def get_config(arg=None):
    arg = parse_arg(arg, size='8b', steps=1000, batch=256, seq=8192, data='pystdlib', lr=0.0)
    if arg.size not in PRESETS:
        raise ConfigError(f'experiments/llm.py: size={arg.size!r}, expected one of {PRESETS}')
    c = ml_collections.ConfigDict()
    c.model = defaults.gpt(
        SIZES[f'llama_{arg.size}'],
        vocab_size=VOCAB,
        tie_embeddings=False,
        rope_base=500000.0,
        norm_eps=1e-5,
        scan_layers=True,
        remat='full',  # keep each layer's input only; 'dots' keeps matmul outputs too
        dtype='bfloat16',
        param_dtype='float32',
        attention='einsum',  # 'cudnn' on NVIDIA GPUs (fused flash attention)
    )
    c.data = defaults.lm_data(arg.data, arg.seq)
    c.loss = dict(name='autoregressive', z_loss=0.0)
    c.optimizer = defaults.lm_optimizer(lr=arg.lr or LR[arg.size], clip_norm=1.0)
    c.parallel = defaults.parallel(data=1, fsdp=-1)
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch)
    c.evals = defaults.lm_evals()
    return c
