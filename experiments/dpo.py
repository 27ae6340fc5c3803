r"""Preference optimisation (DPO, IPO, cDPO, SimPO, ORPO) of a GPT on (prompt, chosen,
rejected) pairs: the embedded preference task, or your own JSONL / Parquet pairs.

    jaxbig train --config experiments/sft.py --workdir runs/sft            # the SFT policy
    jaxbig train --config experiments/dpo.py:init=runs/sft --workdir runs/dpo
    jaxbig train --config experiments/dpo.py:init=runs/sft,lora=8 --workdir runs/dpo_lora
    jaxbig train --config experiments/dpo.py:type=simpo,beta=2 --workdir runs/simpo  # no init
    jaxbig train --config experiments/dpo.py:init=runs/sft,data=prefs.jsonl --workdir runs/mine
    jaxbig eval --workdir runs/dpo

Arguments (`experiments/dpo.py:key=value,...`):
  init    the run the policy starts from (jaxbig's SFT / LM run, or an imported model: its
          model section and tokenizer are taken over, its params loaded). For type=dpo / ipo
          it is also the reference model: loaded once, frozen (loss.reference); required
  type    'dpo' (sigmoid; with label_smoothing > 0: cDPO) | 'ipo' | 'simpo' | 'orpo'
          (jaxbig/losses/preference.py; simpo and orpo need no reference, so no init either)
  beta    the loss's beta (0 = the type's usual: dpo / ipo 0.1, simpo 2.0, orpo 0.1)
  label_smoothing (dpo, simpo), gamma (simpo's target margin)
  lora    adapter rank (0 = full fine-tuning): LoRA on the attention and MLP kernels, the
          base frozen; the reference is then the policy with its adapters off (no copy)
  task    embedded pairs: 'name' (a function's true name vs another name from its file) |
          'body' (jaxbig/data/builders/preference_task.py)
  data    a JSONL / Parquet file, directory or glob of {prompt, chosen, rejected} records
          (plain strings, or lists of messages rendered with the init run's chat template:
          jaxbig/data/text/preference_files.py) instead of the embedded pairs
  size    model shape from `jaxbig.models.gpt.SIZES` (without init)
  steps, batch (pairs per update), seq (tokens per side; longer pairs are left out), lr

Evaluators, at the end and every `eval_every` steps: `val` (the loss on every validation
pair: val/rewards/accuracies is the held-out preference accuracy, val/rewards/margins,
val/logps/*), `gen` (greedy responses to 128 validation prompts: exact match and chrF
against the chosen response, as for SFT).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults dpo`: README's commands as
written, runs/sft being README's SFT run, experiments/sft.py:init=runs/lm at its 1,200 steps;
2-core CPU):

    jaxbig train --config experiments/dpo.py:init=runs/sft --workdir runs/dpo
        (200 steps) val/rewards/accuracies 0.632 on the 866 validation pairs, margin 0.533,
        logps/accuracies 0.625, val nll 1.640; greedy names exact 2 / 128 (the SFT run's
        count), chrF 14.3; 3.8 min wall, 350 s CPU

Measured earlier the same day (`python benchmarks/research.py dpo`; the SFT run then was
experiments/sft.py from scratch at 300 steps, 4.0 min; 866 validation pairs, greedy answers
to 128 prompts; 2-core CPU shared with other jobs). logps/acc: the policy ranks the true name above the
other one (summed log-probs); rewards/acc: its reward does (0 for the reference itself).

    run (from the SFT run)                 logps/acc  rewards/acc  margin  val nll  chrF  wall
    SFT itself (DPO's evaluators, frozen)    0.600       -          -       1.964   14.1
    dpo (the defaults: 200 steps)            0.626     0.606      0.316     2.145   10.5  6.7 min
    dpo, lora=8                              0.626     0.609      0.373     2.183   11.0  6.8 min

DPO fits its training pairs (train loss 0.693 -> ~0.58) but moves the held-out ranking by
only 2.6 points, and, as often reported for DPO, it lowers the likelihood of the chosen
responses too (val nll +0.18 nats/token), which costs chrF; exact match is 0 before and
after at this size. At lr=5e-4 the training loss swings (1.08 at step 100) and ends worse
(rewards/acc 0.584, logps/acc 0.622, chrF 10.7). (benchmarks/RESULTS_RESEARCH.md has the
runs' commands.)
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders.conditional_task import TASKS
from jaxbig.losses.preference import ADAPTERS_OFF, NEEDS_REFERENCE, TYPES
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config

BETA = {'dpo': 0.1, 'ipo': 0.1, 'simpo': 2.0, 'orpo': 0.1}
LORA_TARGETS = ['.*attn/(query|key|value|out)/kernel', '.*mlp/(gate|up|down)/kernel']


def get_config(arg=None):
    arg = parse_arg(arg, init='', type='dpo', beta=0.0, label_smoothing=0.0, gamma=0.5,
                    lora=0, task='name', data='', size='tiny', steps=200, batch=16, seq=256,
                    lr=0.0)
    if arg.type not in TYPES:
        raise ConfigError(f'experiments/dpo.py: type={arg.type!r}, expected one of {TYPES}')
    if arg.type in NEEDS_REFERENCE and not arg.init:
        raise ConfigError(f'experiments/dpo.py: type={arg.type} needs init=RUN (the SFT run '
                          'the policy starts from and its reference); simpo / orpo need none')
    if arg.task not in TASKS:
        raise ConfigError(f'experiments/dpo.py: task={arg.task!r}, expected one of {TASKS}')
    if arg.size not in SIZES:
        raise ConfigError(f'experiments/dpo.py: size={arg.size!r}, expected one of {list(SIZES)}')
    c = ml_collections.ConfigDict()
    c.model = defaults.gpt(SIZES[arg.size], vocab_size='auto', attention='einsum',
                           attention_blocks=0)
    c.data = defaults.preference_data(arg.task, arg.seq)
    if arg.data:
        c.data.update(name='files', path=arg.data)
    c.init_from = defaults.init_from(path=arg.init)
    if arg.init:  # its shape and tokenizer
        defaults.take_over_gpt(c, read_config(arg.init), arg.init, 'experiments/dpo.py',
                               'preference training')
    defaults.conditional_run(c, arg, loss='preference')
    c.optimizer.lr = arg.lr or (1e-4 if arg.init else 1e-3)
    c.optimizer.weight_decay = 0.0
    reference = ''
    if arg.type in NEEDS_REFERENCE:
        reference = ADAPTERS_OFF if arg.lora else arg.init
    c.loss = dict(name='preference', type=arg.type, beta=arg.beta or BETA[arg.type],
                  label_smoothing=arg.label_smoothing, gamma=arg.gamma, reference=reference)
    if arg.lora:
        c.lora = dict(targets=LORA_TARGETS, rank=arg.lora, alpha=2.0 * arg.lora)
        c.optimizer.freeze = ['(?!lora/).*']
        c.optimizer.lr = arg.lr or 1e-3
    return c
