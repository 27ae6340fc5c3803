r"""GRPO: online RL with a verifiable reward on the embedded name task — the policy answers
each prompt G times inside the compiled train step, and learns from its own samples.

    jaxbig train --config experiments/sft.py --workdir runs/sft             # the SFT policy
    jaxbig train --config experiments/grpo.py:init=runs/sft --workdir runs/grpo
    jaxbig train --config experiments/grpo.py:init=runs/sft,lora=8 --workdir runs/grpo_lora
    jaxbig eval --workdir runs/grpo

Arguments (`experiments/grpo.py:key=value,...`):
  init    the run the policy starts from (an SFT / LM run of the bytes GPT, or an imported
          model): its model section and tokenizer are taken over, its params loaded; also
          the KL reference (frozen; with lora: the policy with its adapters off). Required
  group   G, samples per prompt; prompts: prompts per update (batch = prompts, each
          answered G times: prompts x G rollouts per update)
  max_new_tokens, temperature   of the rollouts
  beta    KL coefficient (k3 estimator against the reference; 0 = no reference forward)
  epsilon the clip of the ratio; reward: 'prefix' (1 if exact, else 0.5 x the answer's
          prefix matched) | 'exact' (jaxbig/losses/grpo.py)
  lora    adapter rank (0 = full fine-tuning); task ('name' | 'body'), prompt_len and
          answer_len (tokens; longer examples are left out), steps, lr

Evaluators, at the end and every `eval_every` steps: `val` (the GRPO loss on 64 held-out
prompts, sampled with a fixed key: val/reward, val/exact_match are the held-out mean reward
and the fraction of exact samples at the rollout temperature), `gen` (greedy answers to 128
held-out prompts: exact match and chrF, as for SFT).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults grpo`: README's commands
as written, runs/sft being README's SFT run, experiments/sft.py:init=runs/lm at its 1,200
steps; 2-core CPU):

    jaxbig train --config experiments/grpo.py:init=runs/sft --workdir runs/grpo
        (200 updates) val/reward 0.143 on 64 held-out prompts x 8 samples, exact samples
        4.7 %, completion length 6.2 tokens, KL 0.76 nats per token; greedy names exact
        3 / 128 (the SFT run: 2), chrF 11.6 (16.6); 9.0 min wall, 800 s CPU

Measured earlier the same day (`python benchmarks/research.py grpo`; from experiments/sft.py
from scratch at its then 300 steps; val: 64 held-out prompts x 8 samples at temperature 1, the same keys
at every evaluation; gen: greedy answers to 128 held-out prompts; 2-core CPU shared):

    run                                  val/reward  exact samples  length  greedy exact  chrF
    SFT itself (frozen, GRPO evaluators)    0.068        0.6 %        13.0     0 / 128     13.5
    grpo (the defaults: 200 updates,        0.124        3.5 %         5.6     2 / 128      9.9
      7.9 min wall, 830 s of CPU)

The held-out reward rises at every evaluation (0.109, 0.113, 0.115, 0.122, 0.124 at steps
40..200) with the KL to the SFT model at ~0.5-0.65 nats per token. Most of the gain is
learning to stop after a name (responses 13 -> 5.6 tokens), which the prefix reward pays
for; the exact names rise from 0.6 % to 3.5 % of samples. chrF against the true name falls
as the answers get shorter. At lr 1e-4 (100 updates) the held-out reward did not move
(0.096 -> 0.102 under the earlier form of the prefix reward). Curves:
benchmarks/research/grpo.png.
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders.conditional_task import TASKS
from jaxbig.losses.grpo import REWARDS
from jaxbig.losses.preference import ADAPTERS_OFF
from jaxbig.run import read_config

LORA_TARGETS = ['.*attn/(query|key|value|out)/kernel', '.*mlp/(gate|up|down)/kernel']


def get_config(arg=None):
    arg = parse_arg(arg, init='', group=8, prompts=8, max_new_tokens=24, temperature=1.0,
                    beta=0.04, epsilon=0.2, reward='prefix', lora=0, task='name',
                    prompt_len=192, answer_len=24, steps=200, lr=0.0)
    if not arg.init:
        raise ConfigError('experiments/grpo.py: init=RUN is required (the SFT run the policy '
                          'starts from, e.g. runs/sft)')
    if arg.task not in TASKS:
        raise ConfigError(f'experiments/grpo.py: task={arg.task!r}, expected one of {TASKS}')
    if arg.reward not in REWARDS:
        raise ConfigError(f'experiments/grpo.py: reward={arg.reward!r}, expected one of {REWARDS}')
    c = ml_collections.ConfigDict()
    c.data = dict(pipeline='prompts', name='pystdlib', data_dir='', task=arg.task,
                  prompt_len=arg.prompt_len, answer_len=arg.answer_len, train_split='train',
                  val_split='validation', tokenizer='bytes', eos_id=-1,
                  **defaults.data_loading())
    defaults.take_over_gpt(c, read_config(arg.init), arg.init, 'experiments/grpo.py', 'GRPO')
    c.init_from = defaults.init_from(path=arg.init)
    arg.batch, arg.seq = arg.prompts, 0
    defaults.conditional_run(c, arg, loss='grpo')
    c.optimizer.lr = arg.lr or (1e-3 if arg.lora else 3e-4)
    c.optimizer.weight_decay = 0.0
    c.evals.val.num_examples = 64
    c.evals.gen.max_new_tokens = arg.max_new_tokens
    c.loss = dict(name='grpo', group_size=arg.group, max_new_tokens=arg.max_new_tokens,
                  temperature=arg.temperature, beta=arg.beta, epsilon=arg.epsilon,
                  reward=arg.reward, reference=(ADAPTERS_OFF if arg.lora else arg.init)
                  if arg.beta else '', eos_id=_eos_id(c.data))
    if arg.lora:
        c.lora = dict(targets=LORA_TARGETS, rank=arg.lora, alpha=2.0 * arg.lora)
        c.optimizer.freeze = ['(?!lora/).*']
    return c


def _eos_id(data) -> int:
    from jaxbig.data.text import tokenizers

    eos = tokenizers.from_config(dict(tokenizer=data['tokenizer'], eos_id=data['eos_id'])).eos_id
    if eos is None:
        raise ConfigError(f"experiments/grpo.py: the tokenizer {data['tokenizer']!r} has no "
                          'end-of-sequence token to end the rollouts')
    return int(eos)
