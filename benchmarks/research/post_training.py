"""Research entries for post-training (issue #35): SFT, then preference optimisation.

`dpo`: experiments/sft.py at its defaults (the name task, tiny GPT, 300 steps), then from
it experiments/dpo.py at its defaults (DPO, beta 0.1, full fine-tuning, the SFT run as the
frozen reference) and with LoRA adapters (lora=8: the reference is the policy with its
adapters off). The "before" row is the SFT model under the DPO run's evaluators (a run
whose every parameter is frozen: policy = reference), so its val/logps/accuracies is the
SFT model's own held-out preference accuracy and gen/* its exact match and chrF on the
same 128 prompts.
"""

from __future__ import annotations

from research import harness

SFT = 'experiments/sft.py'
DPO = 'experiments/dpo.py'
FIGURES = ('val/rewards/accuracies', 'val/logps/accuracies', 'val/rewards/margins',
           'val/loss', 'val/nll', 'gen/exact_match', 'gen/chrf')


def dpo(ctx) -> dict:
    quick = (['--config.train.steps=8', '--config.evals.val.num_examples=32',
              '--config.evals.gen.num_examples=8'] if ctx.quick else [])
    sft = ctx.train('sft', SFT, quick)
    init = harness.display(ctx.workdir('sft'))
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
