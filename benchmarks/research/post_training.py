"""Research entries for post-training (issue #35): SFT, then preference optimisation or RL.

`dpo`: experiments/sft.py at its defaults (the name task, tiny GPT, from scratch), then from
it experiments/dpo.py at its defaults (DPO, beta 0.1, full fine-tuning, the SFT run as the
frozen reference) and with LoRA adapters (lora=8: the reference is the policy with its
adapters off). The "before" row is the SFT model under the DPO run's evaluators (a run
whose every parameter is frozen: policy = reference), so its val/logps/accuracies is the
SFT model's own held-out preference accuracy and gen/* its exact match and chrF on the
same 128 prompts.
"""

from __future__ import annotations

import dataclasses

from research import harness

SFT = 'experiments/sft.py'
DPO = 'experiments/dpo.py'
GRPO = 'experiments/grpo.py'
FIGURES = ('val/rewards/accuracies', 'val/logps/accuracies', 'val/rewards/margins',
           'val/loss', 'val/nll', 'gen/exact_match', 'gen/chrf')


def sft_policy(ctx, quick) -> tuple[dict, str]:
    """The SFT run both entries start from (trained once, in the dpo entry's workdirs)."""
    shared = dataclasses.replace(ctx, entry='dpo')
    return shared.train('sft', SFT, quick), harness.display(shared.workdir('sft'))


def dpo(ctx) -> dict:
    quick = (['--config.train.steps=8', '--config.evals.val.num_examples=32',
              '--config.evals.gen.num_examples=8'] if ctx.quick else [])
    sft, init = sft_policy(ctx, quick)
    steps = 8 if ctx.quick else 200
    runs = {'sft (frozen, DPO evaluators)': ctx.train(
        'sft_frozen', f'{DPO}:init={init},steps=4',
        [*quick[1:], "--config.optimizer.freeze=['.*']"])}
    runs['dpo'] = ctx.train('dpo', f'{DPO}:init={init},steps={steps}', quick[1:])
    runs['dpo, lora=8'] = ctx.train('dpo_lora', f'{DPO}:init={init},lora=8,steps={steps}',
                                    quick[1:])
    figures = {name: {k: r['final'].get(k) for k in FIGURES} for name, r in runs.items()}
    for name, r in runs.items():
        figures[name]['cpu_s'] = r['cpu_s']
    return dict(kind='table', runs=[sft, *runs.values()], figures=figures)


GRPO_FIGURES = ('val/reward', 'val/exact_match', 'val/completion_length', 'gen/exact_match',
                'gen/chrf', 'train/kl')


def grpo(ctx) -> dict:
    """SFT -> GRPO (defaults: 200 updates of 8 prompts x 8 samples, lr 3e-4, beta 0.04,
    prefix reward):
    the held-out mean reward (val/reward, 64 prompts x 8 samples at temperature 1) at the
    start (a frozen run: the SFT policy) and over training."""
    quick = (['--config.train.steps=8', '--config.evals.val.num_examples=32',
              '--config.evals.gen.num_examples=8'] if ctx.quick else [])
    sft, init = sft_policy(ctx, quick)
    steps = 8 if ctx.quick else 200
    small = ['--config.evals.val.num_examples=8', '--config.evals.gen.num_examples=8'] \
        if ctx.quick else []
    every = [f'--config.train.eval_every={max(steps // 5 // 4 * 4, 4)}']
    runs = {'sft (frozen, GRPO evaluators)': ctx.train(
        'sft_frozen', f'{GRPO}:init={init},steps=4', [*small, "--config.optimizer.freeze=['.*']"])}
    runs['grpo'] = ctx.train('grpo', f'{GRPO}:init={init},steps={steps}', [*small, *every])
    figures = {name: {k: r['final'].get(k) for k in GRPO_FIGURES} for name, r in runs.items()}
    for name, r in runs.items():
        figures[name]['cpu_s'] = r['cpu_s']
    return dict(kind='table', runs=[sft, *runs.values()], figures=figures,
                plot=['train/reward', 'val/reward', 'train/kl', 'train/completion_length'])
