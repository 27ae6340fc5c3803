r"""GPT language model on the embedded corpus (the Python standard library's source), bytes.

The default experiment: offline, on a 2-core CPU in a few minutes.

    jaxbig train --config experiments/lm.py --workdir runs/lm
    jaxbig train --config experiments/lm.py:size=small --workdir runs/lm2 \
        --config.optimizer.lr=1e-3

Arguments (`experiments/lm.py:key=value,...`):
  size    model shape from `jaxbig.models.gpt.SIZES`: tiny | small | gpt2_small | ...
  steps   optimizer updates
  batch   global batch size (sequences)
  seq     sequence length (bytes)
  data    'pystdlib' (embedded) | any TFDS text dataset prepared in data.data_dir (e.g. lm1b)
          | 'folder' (set --config.data.path=DIR) | 'files': JSONL / Parquet shards
          (--config.data.path=FILE|DIR|GLOB, data.text_key, data.splits='validation=0.01')
          | 'hf_disk': a Hugging Face dataset saved with save_to_disk (--config.data.path=DIR;
          a DatasetDict's own splits; needs `pip install 'jaxbig[hf]'`)
  experts Mixture-of-Experts feed-forward with this many experts, top-2, dropless
          (0 = dense; the rest under --config.model.moe.*: jaxbig.models.moe; the aux
          losses' coefficients under --config.loss.moe_*: jaxbig.losses.moe_aux)
  recipe  '' (the defaults) | 'hour': seq=256, steps=3000, the whole validation split scored
          at steps 1,500 and 3,000 (the recipe that beats zlib -9; below)
  harness lm-evaluation-harness at every evaluation (needs `pip install 'jaxbig[harness]'`):
          the embedded jaxbig_stdlib tasks on this many documents each (0 = off); logged as
          harness/<task>/<metric> (jaxbig/evals/harness.py; any task: jaxbig harness)
  init    a workdir to continue from ('' = from scratch): its model section and tokenizer
          are taken over and its params loaded (init_from), e.g. an imported GPT-2 / Llama:
              jaxbig import path/to/hf_model --workdir runs/gpt2
              jaxbig train --config experiments/lm.py:init=runs/gpt2 --workdir runs/cont
          LoRA instead of full updates (adapters only, then generate with them or merge):
              ... --config.lora.targets="['.*attn/(query|value)/kernel']" \
                  --config.optimizer.freeze="['(?!lora/).*']"

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults lm`: README's command as
written; CPython 3.11 standard library, validation split; 2-core CPU):

    jaxbig train --config experiments/lm.py --workdir runs/lm
        (tiny, 600 steps, batch 32 x 128 bytes) val/bits_per_byte 2.107 = 1.461 nats/byte,
        perplexity 4.31, next-byte accuracy 62.0 % on 256 validation sequences (32,768
        targets); 2.4 min wall, 255 s CPU (2.103 on another CPU the same day: the tolerance
        README's table allows is 0.02)

The split's own baselines (benchmarks/research.py entry `lm_baselines`), in nats/byte:
unigram 3.26 and bigram 2.47 (fitted on train, add-one), zlib -9 1.13, xz -9e 0.94.
Beating zlib -9 in under an hour of a 2-core CPU (entry `lm_recipe`; README's command as
written, measured 2026-12-08):

    jaxbig train --config experiments/lm.py:recipe=hour --workdir runs/lm_hour
        val/bits_per_byte 1.470 = 1.019 nats/byte on the whole validation split (5,689
        windows, 1.46 M scored bytes; 1.720 at step 1,500), next-byte accuracy 72.6 %,
        against zlib's 1.635; 36 min wall, 3,130 s CPU (another CPU than 2026-12-02's
        1.548 in 54 min, which was measured under the old rules of README "What the
        numbers mean": per-batch means averaged)

Every LM run and what bounds it: benchmarks/RESULTS_RESEARCH.md.
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config


# Named recipes: the arguments they change (anything else on the command line still wins).
# 'hour': the recipe that beats zlib -9 in about an hour of a 2-core CPU (24.6 M bytes; why
# this shape and length: benchmarks/research.py, entry `lm_recipe`), scored on the whole
# validation split at its middle and end.
RECIPES = {'': {}, 'hour': dict(seq=256, steps=3000)}
ARGS = dict(size='tiny', steps=600, batch=32, seq=128, data='pystdlib', init='', experts=0,
            harness=0, recipe='')


def get_config(arg=None):
    recipe = parse_arg(arg, **ARGS).recipe
    if recipe not in RECIPES:
        raise ConfigError(f'experiments/lm.py: recipe={recipe!r}, expected one of '
                          f'{[r for r in RECIPES if r]}')
    arg = parse_arg(arg, **{**ARGS, **RECIPES[recipe]})
    if arg.size not in SIZES:
        raise ConfigError(f'experiments/lm.py: size={arg.size!r}, expected one of {list(SIZES)}')
    c = ml_collections.ConfigDict()

    # scan_layers / remat 'auto' are resolved after --config overrides
    # (jaxbig.experiment.resolve_auto): scan over depth above 6 layers (unrolled runs ~12 %
    # faster on CPU at 4-6, scan keeps compile time flat); remat 'dots' from GPT-2-small
    # width up, where saving only the matmul outputs is faster, 'none' below
    # (benchmarks/RESULTS.md).
    c.model = defaults.gpt(
        SIZES[arg.size],
        vocab_size='auto',  # follows data.tokenizer: 256 bytes, or the tokenizer's vocabulary
        attention='einsum',  # 'xla' | 'cudnn': jax.nn.dot_product_attention (cudnn on GPU)
        attention_blocks=0,  # einsum path: 0 = query blocks of max(64, seq/4); 1 = no split
        moe=defaults.moe(experts=arg.experts),
    )
    c.data = defaults.lm_data(arg.data, arg.seq)
    c.init_from = defaults.init_from(path=arg.init)
    if arg.init:  # continue another run (jaxbig's own or imported): its shape and tokenizer
        source = read_config(arg.init)
        c.model = source.model.to_dict()
        data = source.get('data') or {}
        c.data.tokenizer = data.get('tokenizer', 'bytes')
        c.data.eos_id = data.get('eos_id', -1)
    c.loss = defaults.lm_loss()
    c.optimizer = defaults.lm_optimizer()
    c.parallel = defaults.parallel()
    # 4 updates per compiled call: the tiny step is ~7 % faster (XLA CPU maps and zeroes a
    # call's temporaries afresh each call; benchmarks/RESULTS.md). Calls still end at every
    # log / eval / checkpoint step, so the updates are those of steps_per_call=1.
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch, steps_per_call=4)
    c.evals = defaults.lm_evals()
    if recipe == 'hour':
        c.evals = defaults.lm_evals(num_examples=0)  # the whole split
        c.train.update(eval_every=arg.steps // 2, checkpoint_every=arg.steps // 2)
    if arg.harness:  # lm-evaluation-harness's view of the same run (jaxbig/evals/harness.py)
        c.evals.harness = dict(type='harness', tasks='jaxbig_stdlib', limit=arg.harness)
    # LoRA adapters on the LM (jaxbig/lora.py; targets [] = off). To train adapters only:
    #   --config.lora.targets="['.*attn/(query|value)/kernel']" \
    #   --config.optimizer.freeze="['(?!lora/).*']"
    c.lora = dict(targets=[], rank=8, alpha=16.0)
    return c
