r"""BERT masked-language model on the embedded corpus (the Python standard library's source),
bytes. The same loop, data and evaluator as experiments/lm.py; the objective is
`jaxbig.losses.masked_lm` (15 % of the bytes chosen, 80 / 10 / 10 [MASK] / random / kept,
the loss on the chosen bytes only) and the model `jaxbig.models.bert`.

    jaxbig train --config experiments/mlm.py --workdir runs/mlm
    jaxbig train --config experiments/mlm.py:positions=learned --workdir runs/bert_orig  # BERT's
    jaxbig train --config experiments/finetune_text.py:init=runs/mlm,mode=full --workdir runs/ft

Arguments (`experiments/mlm.py:key=value,...`):
  size       model shape from `jaxbig.models.bert.SIZES`: tiny (4 x 128, MLP 384: the GPT
             'tiny' shape) | small | base (BERT-base)
  steps      optimizer updates
  batch      global batch size (sequences)
  seq        sequence length (bytes; + 1 for the class token, which with positions=learned
             takes the first of the table's seq + 1 rows)
  norm       'post' (BERT: LayerNorm after each residual, and on the embeddings) | 'pre'
  positions  'rope' (rotary q, k, as the GPT) | 'learned' (BERT's absolute table)
  pool       the features a fine-tune reads by default: 'mean' | 'cls' (the class token)
  lr         peak learning rate (AdamW, 5 % warmup, cosine)
  data       'pystdlib' (embedded) | any TFDS text dataset prepared in data.data_dir |
             'files' (JSONL / Parquet: --config.data.path=..., as experiments/lm.py)
  init       a workdir to continue from (e.g. an imported Hugging Face BertForMaskedLM:
             `jaxbig import DIR --workdir runs/bert`): its model, tokenizer and mask id
             are taken over and its params loaded

The vocabulary is the 256 bytes plus [MASK] = 256 (model.vocab_size=257, loss.mask_id=256;
random replacements are bytes). Evaluation (`val`, the loss evaluator on 8 fixed validation
batches, each masked the same way every time): val/loss (nats per chosen byte),
val/masked_accuracy, val/chosen_fraction (~0.15), val/bits_per_byte (= loss / ln 2).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults mlm`: README's command
as written; val on the first 256 validation sequences, 4,814 chosen bytes; 2-core CPU; for
reference the byte unigram entropy is ~3.25 nats, the bigram ~2.43):

    jaxbig train --config experiments/mlm.py --workdir runs/mlm    (tiny, 600 steps)
        val/loss 1.577 nats per masked byte, val/masked_accuracy 0.594; 3.8 min wall,
        286 s CPU (before 2026-12-06, old rules: 1.60 and 0.585)

Measured before 2026-12-06 (old rules, not re-measured), 300 steps of batch 32 x 128 bytes (the budget of experiments/finetune_text.py's backbones):

    experiments/mlm.py:steps=300,...        val/loss  masked_accuracy  wall
    norm=post, positions=rope  (default)      1.93        0.519        215 s
    norm=pre,  positions=rope                 2.35        0.399        198 s
    norm=pre,  positions=rope, lr=3e-3        2.40        0.369        273 s
    norm=post, positions=learned (BERT's)     2.90        0.352        150 s
    norm=post, positions=learned, lr=3e-3     3.22        0.290        249 s

With BERT's learned position table the loss sits on a plateau near the unigram entropy for
the whole 300 steps (the model has yet to learn which neighbours to attend to); rotary
positions give that locality from the start, hence the default. The GPT of experiments/lm.py
on the same 300-step budget reaches 1.64 nats per next byte (a different task: left context
only, but every position a target, where MLM learns from 15 %). Fine-tuning the two
backbones: experiments/finetune_text.py's docstring.

(These figures were measured before 2026-12-06, under the old rules: a mean of
per-batch means over num_batches x batch rows, rank-based weight decay, a
layout-dependent init — README "What the numbers mean"; not yet re-measured.)
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.losses import masked_lm
from jaxbig.models.bert import NORMS, POOLS, POSITIONS, SIZES
from jaxbig.run import read_config


def model_section(size: str, seq: int, **overrides) -> dict:
    """jaxbig's byte BERT: post-norm, rotary positions, a class token, tied MLM head."""
    return {**dict(name='bert', vocab_size=257, max_len=seq + 1, type_vocab_size=2,
                   **SIZES[size], dropout=0.0, scan_layers='auto', norm='post',
                   positions='rope', rope_base=10000.0, use_bias=True, norm_eps=1e-12,
                   mlp_act='gelu_exact', class_token=True, pool='mean', pooler=False,
                   head='mlm'), **overrides}


def get_config(arg=None):
    arg = parse_arg(arg, size='tiny', steps=600, batch=32, seq=128, norm='post',
                    positions='rope', pool='mean', lr=1e-3, data='pystdlib', init='')
    for key, allowed in (('size', tuple(SIZES)), ('norm', NORMS), ('positions', POSITIONS),
                         ('pool', POOLS)):
        if arg[key] not in allowed:
            raise ConfigError(f'experiments/mlm.py: {key}={arg[key]!r}, expected one of '
                              f'{list(allowed)}')
    c = ml_collections.ConfigDict()
    c.model = model_section(arg.size, arg.seq, norm=arg.norm, positions=arg.positions,
                            pool=arg.pool)
    c.data = defaults.lm_data(arg.data, arg.seq)
    c.loss = masked_lm.section()
    c.init_from = defaults.init_from(path=arg.init)
    if arg.init:  # continue another MLM run (jaxbig's or an imported BERT)
        source = read_config(arg.init)
        if source.model.get('name') != 'bert' or source.get('loss', {}).get('name') != (
                'masked_lm'):
            raise ConfigError(f'experiments/mlm.py: init={arg.init!r} is not a masked-LM run '
                              f"(model.name={source.model.get('name')!r})")
        c.model = source.model.to_dict()
        c.loss = source.loss.to_dict()
        data = source.get('data') or {}
        c.data.tokenizer = data.get('tokenizer', 'bytes')
        c.data.eos_id = data.get('eos_id', -1)
    c.optimizer = defaults.lm_optimizer(lr=arg.lr, b2=0.98, weight_decay=0.01)
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch, steps_per_call=4)
    c.evals = defaults.lm_evals()
    c.lora = dict(targets=[], rank=8, alpha=16.0)
    return c
