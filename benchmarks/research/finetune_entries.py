"""Does pretraining pay? Two grid entries (benchmarks/research/grid.py), run through the
real CLI by benchmarks/research.py.

label_efficiency(ctx)   SimCLR on the digits training images (labels unused), then the
                        same ResNet fine-tuned with 1 % / 10 % / 100 % of the training labels
                        (`experiments/finetune_image.py:labels=`, stratified, nested,
                        `jaxbig.data.label_subset`): a linear probe on the frozen SimCLR
                        features (mode=features), full fine-tuning from SimCLR, and the same
                        network trained from scratch; plus logistic regression on the raw
                        pixels of the same labelled rows (scikit-learn, no training run).
                        3 seeds each: a seed picks both the labelled rows (label_seed) and
                        the run's train.seed. val/accuracy on the 359 held-out digits.
text_finetune(ctx)      experiments/lm.py pretrained (its defaults), and the same GPT
                        untrained (4 steps with every parameter frozen: its initialisation,
                        checkpointed bit-identically); each
                        fine-tuned on the embedded text task in every mode
                        (features / linear_probe / lora / full) at equal steps, 3 seeds
                        (train.seed). val/accuracy on 1,024 validation snippets (9 classes).
"""

from __future__ import annotations

import os

import numpy as np

from research import grid, harness

SEEDS = (0, 1, 2)

# ----------------------------------------------------------------------------- images

FRACTIONS = (0.01, 0.1, 1.0)
SIMCLR = 'experiments/simclr.py:data=digits'  # resnet18 width 16, 300 steps of batch 256
FINETUNE_IMAGE = 'experiments/finetune_image.py'
IMAGE_ARMS = {  # arm: the finetune_image.py arguments (init= added where it says so)
    'linear probe on SimCLR': ('mode=features', True),
    'full, from SimCLR': ('mode=full', True),
    'full, from scratch': ('mode=full', False),
}
PIXELS_ARM = 'pixels, logistic regression'


def pixel_baseline(fraction: float, seed: int) -> float:
    """Accuracy on digits' test split of scikit-learn's LogisticRegression (lbfgs, C=1,
    max_iter 5,000) on the raw pixels in [-1, 1] of the labelled rows that
    finetune_image.py:labels=fraction,label_seed=seed trains on."""
    from sklearn.linear_model import LogisticRegression

    from jaxbig import config as config_lib
    from jaxbig import data
    from jaxbig.data import image_sources

    cfg = config_lib.load(os.path.join(harness.REPO, f'{FINETUNE_IMAGE}:mode=full,'
                                       f'labels={fraction},label_seed={seed}')).data
    data.prepare(cfg)

    def xy(split):
        s = image_sources.load_split(cfg, split, ('image', 'label'))
        rows = s.read(np.arange(len(s)))
        return image_sources.normalize(rows['image']).reshape(len(s), -1), rows['label']

    (x, y), (xt, yt) = xy('train'), xy('test')
    model = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    return float(np.mean(model.predict(xt) == yt))


def label_efficiency(ctx) -> dict:
    fractions, seeds = ((0.1, 1.0), SEEDS[:2]) if ctx.quick else (FRACTIONS, SEEDS)
    shorten = ',steps=4,batch=16' if ctx.quick else ''
    pre = ctx.train('simclr', SIMCLR + shorten, ['--config.train.eval_every=0'] if ctx.quick
                    else [])
    init = harness.display(ctx.workdir('simclr'))
    cells, runs = [], [pre]
    for fraction in fractions:
        for arm, (args, from_simclr) in IMAGE_ARMS.items():
            records = []
            for seed in seeds:
                spec = (f'{FINETUNE_IMAGE}:{args},labels={fraction},label_seed={seed}'
                        + (f',init={init}' if from_simclr else '') + shorten)
                name = f'{args.split("=")[1]}_{"simclr" if from_simclr else "scratch"}' \
                       f'_labels{fraction}_seed{seed}'
                records.append(ctx.train(name, spec, [f'--config.train.seed={seed}']))
            cells.append(grid.cell(arm, fraction, records, 'val/accuracy'))
            runs += records
        values = [pixel_baseline(fraction, seed) for seed in seeds]
        cells.append(dict(grid.cell(PIXELS_ARM, fraction, [], 'val/accuracy', values),
                          seeds=list(seeds)))
    return grid.grid_result('val/accuracy', 'labelled fraction', cells, runs, x_log=True,
                            pretrain=pre['command'])


# ----------------------------------------------------------------------------- text

TEXT_MODES = ('features', 'linear_probe', 'lora', 'full')
TEXT_STEPS = 200
LM = 'experiments/lm.py'  # tiny GPT, 600 steps of 32 x 128 bytes
FINETUNE_TEXT = 'experiments/finetune_text.py'


def text_finetune(ctx, modes=TEXT_MODES, pooling: str = '') -> dict:
    """Every mode in `modes` from the LM and from the same GPT untrained, 3 seeds each;
    pooling: finetune_text.py's pooling ('' = its default per mode)."""
    seeds, steps = (SEEDS[:2], 4) if ctx.quick else (SEEDS, TEXT_STEPS)
    quick = ['--config.train.steps=4', '--config.train.eval_every=0',
             '--config.evals.val.num_examples=32'] if ctx.quick else []
    pretrained = ctx.train('lm', LM, quick)
    untrained = ctx.train('lm_untrained', LM, [*quick[1:], '--config.train.steps=4',
                                               '--config.optimizer.freeze=[".*"]'])
    cells, runs = [], [pretrained, untrained]
    eval_quick = ['--config.evals.val.num_examples=64'] if ctx.quick else []
    pool_arg, pool_name = (f',pooling={pooling}', f'_{pooling}') if pooling else ('', '')
    for init, label in (('lm', 'from the LM'), ('lm_untrained', 'untrained GPT')):
        path = harness.display(ctx.workdir(init))
        for mode in modes:
            extra = ',examples=256' if ctx.quick and mode == 'features' else ''
            spec = f'{FINETUNE_TEXT}:init={path},mode={mode},steps={steps}{pool_arg}{extra}'
            records = [ctx.train(f'{mode}{pool_name}_{init}_seed{seed}', spec,
                                 [f'--config.train.seed={seed}', *eval_quick])
                       for seed in seeds]
            cells.append(grid.cell(label, f'{mode}, {pooling} pooling' if pooling else mode,
                                   records, 'val/accuracy'))
            runs += records
    return grid.grid_result('val/accuracy', 'mode', cells, runs,
                            pretrain=pretrained['command'], untrained=untrained['command'])
