r"""Supervised fine-tuning (SFT) of a GPT on the embedded conditional-generation task:
(prompt, response) pairs from the standard library's functions, loss on response tokens only.

    jaxbig train --config experiments/sft.py --workdir runs/sft            # from scratch
    jaxbig train --config experiments/lm.py --workdir runs/lm              # or pretrain first
    jaxbig train --config experiments/sft.py:init=runs/lm --workdir runs/sft_lm
    jaxbig train --config experiments/sft.py:task=body,seq=512 --workdir runs/sft_body
    jaxbig train --config experiments/sft.py:init=runs/qwen,data=chats.jsonl --workdir runs/chat
    jaxbig eval --workdir runs/sft_lm
    jaxbig generate --workdir runs/sft_lm --max-new-tokens 40 \
        --prompt $'def <name>(self):\n    return self._items.pop()\n# name:'

Arguments (`experiments/sft.py:key=value,...`):
  task    'name': a function's source with its name replaced by `<name>`, then "# name:"
          -> " " + its name | 'body': the def line(s) and docstring -> the rest of the body
          (jaxbig/data/builders/conditional_task.py; validation examples come from held-out files)
  size    model shape from `jaxbig.models.gpt.SIZES` (from scratch)
  steps, batch (rows of `seq` tokens), seq (tokens per row; longer examples are left out)
  pack    several examples per row (attention and the loss mask stay within each example);
          pack=false: one example per row
  data    a JSONL / Parquet file, directory or glob of chat records {"messages": [{"role",
          "content"}, ...]} instead of the embedded task: rendered with the init run's chat
          template (an imported model's) or the default ChatML text; the loss covers every
          assistant turn (jaxbig/data/pipelines/conditional.py, jaxbig/data/text/chat.py)
  init    a workdir to start from ('' = from scratch): any LM run, jaxbig's own or imported
          (`jaxbig import path/to/hf_model --workdir runs/gpt2`): its model section and
          tokenizer are taken over and its params loaded (init_from)
  lr      peak learning rate (0 = 3e-3 from scratch, 1e-3 from `init`)

The loss is the autoregressive one (nats per response token): the data's mask is 1 on
response tokens only. Evaluators, at the end and every `eval_every` steps: `val` (teacher-
forced loss on 8 validation batches), `gen` (greedy responses to 128 validation prompts with
the KV cache: exact match and chrF; the texts go to `<workdir>/generations_gen.json`).

Measured (CPython 3.11 standard library; tiny GPT, 300 steps, packed rows; wall times on a
2-core CPU shared with other jobs, evaluations included). Examples that fit a row: task=name
at seq=256, 24,403 train / 878 validation (of 50,226 / 2,180 extracted); task=body at
seq=512, 4,887 / 206 (of 7,901 / 347). `val/loss`: nats per response byte; `gen/...` on
128 validation prompts. `init=runs/lm` is `jaxbig train --config experiments/lm.py
--workdir runs/lm --config.train.steps=300` (val loss 1.64 nats/byte, 2 min 40 s).

    run                                        val/loss  exact_match  chrF   wall
    task=name, from scratch (the defaults)       2.01       0.000     14.7    8 min 52 s
    task=name, init=runs/lm                      1.51       0.000     16.4    7 min 16 s
    task=body,seq=512,batch=16, init=runs/lm     1.37       0.000     14.0   32 min 36 s

Pretraining lowers the response loss by 0.5 nats/byte, but at this size no response is
exact: names come out generic ('setUp', '_get_configure'), bodies as plausible repetitive
code. The body run's wall time is inflated (the CPU was also running tests); generating
128 bodies of up to ~500 bytes took ~5 min per evaluation (--config.evals.gen.num_examples
=32 cuts it).

(These figures were measured before 2026-12-06, under the old rules: a mean of
per-batch means over num_batches x batch rows, rank-based weight decay, a
layout-dependent init — README "What the numbers mean"; not yet re-measured.)
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders.conditional_task import TASKS
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config


def get_config(arg=None):
    arg = parse_arg(arg, task='name', size='tiny', steps=300, batch=32, seq=256, pack=True,
                    init='', lr=0.0, data='')
    if arg.task not in TASKS:
        raise ConfigError(f'experiments/sft.py: task={arg.task!r}, expected one of {TASKS}')
    if arg.size not in SIZES:
        raise ConfigError(f'experiments/sft.py: size={arg.size!r}, expected one of {list(SIZES)}')
    c = ml_collections.ConfigDict()
    c.model = defaults.gpt(SIZES[arg.size], vocab_size='auto', attention='einsum',
                           attention_blocks=0)
    c.data = defaults.conditional_data(arg.task, arg.seq, pack=arg.pack)
    if arg.data:  # your chat conversations instead of the embedded task
        c.data.update(name='files', path=arg.data)
    c.init_from = defaults.init_from(path=arg.init)
    if arg.init:  # start from another run (jaxbig's own or imported): its shape and tokenizer
        defaults.take_over_gpt(c, read_config(arg.init), arg.init, 'experiments/sft.py', 'SFT')
    defaults.conditional_run(c, arg, loss='autoregressive')
    return c
