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
  steps (1,200), batch (rows of `seq` tokens), seq (tokens per row; longer examples are
          left out)
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

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults sft`: README's command as
written, runs/lm being README's default LM run; task=name at seq=256: 24,403 train / 878
validation examples (of 50,226 / 2,180 extracted); 2-core CPU, evaluations included):

    jaxbig train --config experiments/sft.py:init=runs/lm --workdir runs/sft
        (1,200 steps) gen/exact_match 1.6 % = 2 / 128 greedy names (' decode' for a method
        returning quopri_decode(...), ' tearDown' for one removing a temp dir), chrF 16.6;
        val/loss 1.345 nats per response byte on all 878 validation examples; 13.1 min
        wall, 1,339 s CPU

What bounds it: the tiny byte-level GPT (886 k parameters) learns the format and the
vocabulary of names long before it names a function; the commonest answers stay generic
(' test_configure_string' 21 times in 128). Along the same run (evaluations every 300
steps, `--config.train.eval_every=300`): exact 0 / 1 / 1 / 2 of 128 at steps 300 / 600 /
900 / 1,200, val/loss 1.514 / 1.431 / 1.358 / 1.345. Before 2026-12-07 the default was 300
steps, where no answer is exact (0 / 128 from init=runs/lm and from scratch). 2 of 128 is
one seed's count: its binomial standard error is 1.1 points (1.4 answers).

Measured before 2026-12-06 under the old rules (README "What the numbers mean"; not
re-measured), 300 steps, `init=runs/lm` then being a 300-step LM (val 1.64 nats/byte):

    run                                        val/loss  exact_match  chrF   wall
    task=name, from scratch                      2.01       0.000     14.7    8 min 52 s
    task=name, init=runs/lm                      1.51       0.000     16.4    7 min 16 s
    task=body,seq=512,batch=16, init=runs/lm     1.37       0.000     14.0   32 min 36 s

Pretraining lowered the response loss by 0.5 nats/byte; bodies come out as plausible
repetitive code. The body run's wall time is inflated (the CPU was also running tests);
generating 128 bodies of up to ~500 bytes took ~5 min per evaluation
(--config.evals.gen.num_examples=32 cuts it).
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders.conditional_task import TASKS
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config


def get_config(arg=None):
    arg = parse_arg(arg, task='name', size='tiny', steps=1200, batch=32, seq=256, pack=True,
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
