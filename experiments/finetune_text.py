r"""Fine-tune a GPT on the embedded text task: which standard-library package is a snippet of
source from? (9 packages with >= 2 files in both splits; validation files are never trained on.)

    jaxbig train --config experiments/lm.py --workdir runs/lm                 # pretrain
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=full --workdir runs/ft
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=linear_probe \
        --workdir runs/probe
    jaxbig train --config experiments/finetune_text.py --workdir runs/scratch  # no init

Arguments: init (a pretraining workdir; its config.json gives the backbone's shape, its
latest checkpoint the weights; '' = from scratch, tiny GPT), mode (full | linear_probe),
steps, batch, seq, backbone_lr_mult (full mode: learning-rate multiplier of the backbone).

The head is new (zero-initialised Dense on the last real token's features); `init_from`
loads every `encoder/...` parameter from the LM checkpoint. linear_probe freezes
`encoder/.*` (bit-identical after training). The best checkpoint by val/accuracy is kept in
`<workdir>/best/`; training stops early after `patience` evaluations without improvement.
Expected numbers: see the note of the fine-tuning issue (measured on the default LM run).
"""

import json
import os

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.gpt import SIZES

MODES = ('full', 'linear_probe', 'features', 'lora')
LORA_TARGETS = ['.*attn/(query|value)/kernel']


def get_config(arg=None):
    arg = parse_arg(
        arg,
        init='',
        mode='full',
        steps=300,
        batch=32,
        seq=128,
        lr=1e-3,
        backbone_lr_mult=1.0,
        rank=8,
        alpha=16.0,
        examples=4096,
    )
    if arg.mode not in MODES:
        raise ConfigError(
            f'experiments/finetune_text.py: mode={arg.mode!r}, expected one of {MODES}'
        )
    if arg.mode == 'features' and not arg.init:
        raise ConfigError('experiments/finetune_text.py: mode=features needs init=<workdir>')
    backbone = dict(
        name='gpt',
        vocab_size=256,
        **SIZES['tiny'],
        dropout=0.0,
        tie_embeddings=True,
        scan_layers=True,
        remat='none',
        dtype='float32',
        param_dtype='float32',
    )
    if arg.init:
        path = os.path.join(arg.init, 'config.json')
        if not os.path.exists(path):
            raise ConfigError(f'init={arg.init!r}: no config.json there (not a jaxbig workdir)')
        with open(path) as f:
            backbone = json.load(f)['model']
    snippets = dict(
        pipeline='text_classes',
        name='pystdlib',
        data_dir='',
        seq_len=arg.seq,
        min_files=2,
        train_split='train',
        val_split='validation',
    )
    evals = dict(type='classification', split='validation', num_batches=16, batch_size=64)
    c = ml_collections.ConfigDict()
    if arg.mode == 'features':
        c.model = dict(name='linear', num_classes=9)
        c.data = dict(
            pipeline='features',
            source=snippets,
            backbone_from=arg.init,
            backbone_step=-1,
            pooling='last',
            train_split='train',
            val_split='validation',
            embed_batch=256,
            embed_examples=dict(
                train=arg.examples, validation=evals['num_batches'] * evals['batch_size']
            ),
        )
    else:
        c.model = dict(name='classifier', backbone=backbone, num_classes=9, pooling='last')
        c.data = snippets
    if arg.mode == 'lora':
        c.lora = dict(targets=LORA_TARGETS, rank=arg.rank, alpha=arg.alpha)
    c.loss = dict(name='classification', kind='softmax', label_smoothing=0.0)
    c.optimizer = defaults.optimizer(
        lr=arg.lr,
        warmup_steps=max(arg.steps // 20, 1),
        weight_decay=0.01,
        freeze=['encoder/.*'] if arg.mode in ('linear_probe', 'lora') else [],
        lr_mults=[['encoder/.*', arg.backbone_lr_mult]]
        if arg.mode == 'full' and arg.backbone_lr_mult != 1.0
        else [],
    )
    c.init_from = dict(
        path=arg.init if arg.mode != 'features' else '',
        step=-1, rename=[['^', 'encoder/']], include=['encoder/.*'], exclude=[]
    )
    c.parallel = defaults.parallel()
    c.train = defaults.train(
        steps=arg.steps,
        batch_size=arg.batch,
        eval_every=100,
        checkpoint_every=100,
        keep_checkpoints=2,
        best_metric='val/accuracy',
        best_mode='max',
    )
    c.evals = dict(val=evals)
    return c
