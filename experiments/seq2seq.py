r"""A T5-shaped encoder-decoder (jaxbig/models/t5.py) on the embedded conditional task: the
prompt is the encoder's input, the response the decoder's teacher-forced targets
(jaxbig/data/pipelines/seq2seq.py; the same examples and held-out files as experiments/sft.py).

    jaxbig train --config experiments/seq2seq.py --workdir runs/seq2seq
    jaxbig eval --workdir runs/seq2seq
    jaxbig generate --workdir runs/seq2seq --temperature 0 --max-new-tokens 40 \
        --prompt $'def <name>(self):\n    return self._items.pop()\n# name:'
    jaxbig import path/to/hf_t5 --workdir runs/t5          # T5ForConditionalGeneration
    jaxbig train --config experiments/seq2seq.py:init=runs/t5 --workdir runs/t5_name

Arguments (`experiments/seq2seq.py:key=value,...`):
  task    'name' | 'body' (jaxbig/data/builders/conditional_task.py), as in experiments/sft.py
  size    model shape from `jaxbig.models.t5.SIZES` ('tiny': 2 encoder + 2 decoder layers
          at the GPT 'tiny' width, 1.0 M non-embedding params vs its 0.85 M)
  steps, batch (examples per batch: one per row), seq (encoder width; as in SFT, examples
          whose prompt + response + eos exceed seq + 1 tokens are left out)
  target  decoder width (0 = 64 for task=name, seq for task=body): longer responses are
          left out
  init    a T5 workdir to start from ('' = from scratch), jaxbig's own or imported: its
          model section and tokenizer are taken over and its params loaded (init_from)
  lr      peak learning rate (0 = 3e-3 from scratch, 1e-3 from `init`)

Loss: losses/seq2seq.py (nats per response token, eos included). Evaluators, at the end
and every `eval_every` steps: `val` (teacher-forced loss on 8 validation batches), `gen`
(greedy responses to 128 validation prompts: the encoder runs once, the decoder with its
KV cache; exact match and chrF; texts in `<workdir>/generations_gen.json`).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults seq2seq`: README's command
as written; 2-core CPU, evaluations included):

    jaxbig train --config experiments/seq2seq.py --workdir runs/seq2seq
        val/loss 2.113 nats per response byte on all 878 validation examples, gen/chrF 10.1,
        exact match 1 / 128; 3.9 min wall, 311 s CPU

Measured before 2026-12-06 under the old rules (not re-measured; 2-core CPU shared with
other jobs, evaluations included), against experiments/sft.py's runs of then (same task,
steps, batch and encoder width; the same 878 validation examples: no response exceeds 64
bytes;
`val/loss` nats per response byte, `gen/...` on 128 validation prompts):

    run                                        val/loss  exact_match  chrF   wall
    sft.py task=name, from scratch (GPT tiny)    2.01       0.000     14.7    8 min 52 s
    seq2seq.py task=name (the defaults, T5 tiny) 2.09       0.008     11.0   28 min 24 s

Seq2seq: 24,402 train examples (1 response over 64 bytes left out; ~9,600 seen:
300 x 32, one per row; SFT's packed rows see ~1.7x as many), 1.02 M params. At step 150
val/loss 2.22, chrF 10.1. One of 128 names exact (' f'), the rest generic or degenerate
('test_cononode_code...', 'fooo...'): below SFT's chrF, with fewer examples seen. The
wall time is inflated: the CPU was shared with four other jobs (the process got 24 % of
it; 368 s user time).
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders.conditional_task import TASKS
from jaxbig.data.pipelines import seq2seq as seq2seq_data
from jaxbig.models.t5 import SIZES
from jaxbig.run import read_config


def model_section(size: str, **overrides) -> dict:
    """The 't5' model section of a SIZES shape: bytes vocabulary ('auto'), gated-GELU FFN,
    tied embeddings (rescaled head), T5's 32 relative buckets up to distance 128."""
    return {**dict(name='t5', vocab_size='auto', **SIZES[size], num_decoder_layers=0,
                   feed_forward='gated-gelu', relative_buckets=32, relative_max_distance=128,
                   dropout=0.0, norm_eps=1e-6, tie_embeddings=True, rescale_head=None,
                   decoder_start_id=0, scan_layers='auto', dtype='float32',
                   param_dtype='float32'), **overrides}


def get_config(arg=None):
    arg = parse_arg(arg, task='name', size='tiny', steps=300, batch=32, seq=256, target=0,
                    init='', lr=0.0)
    if arg.task not in TASKS:
        raise ConfigError(f'experiments/seq2seq.py: task={arg.task!r}, expected one of {TASKS}')
    if arg.size not in SIZES:
        raise ConfigError(f'experiments/seq2seq.py: size={arg.size!r}, expected one of '
                          f'{list(SIZES)}')
    c = ml_collections.ConfigDict()
    c.model = model_section(arg.size)
    target = arg.target or (64 if arg.task == 'name' else arg.seq)
    c.data = seq2seq_data.section(arg.task, arg.seq, target)
    c.init_from = defaults.init_from(path=arg.init)
    if arg.init:  # start from another T5 run (jaxbig's own or imported): shape, tokenizer
        source = read_config(arg.init)
        if source.model.get('name') != 't5':
            raise ConfigError(f'experiments/seq2seq.py: init={arg.init!r} is a '
                              f'{source.model.get("name")!r} run; seq2seq needs a T5')
        c.model = source.model.to_dict()
        data = source.get('data') or {}
        c.data.tokenizer = data.get('tokenizer', 'bytes')
        c.data.eos_id = data.get('eos_id', -1)
        c.data.decoder_start_id = c.model.decoder_start_id
    defaults.conditional_run(c, arg, loss='seq2seq')
    return c
