r"""Fine-tune an image backbone on digit classification (scikit-learn's digits, held-out split).

    jaxbig train --config experiments/simclr.py:data=digits --workdir runs/simclr   # pretrain
    jaxbig train --config experiments/finetune_image.py:init=runs/simclr,mode=linear_probe \
        --workdir runs/probe
    jaxbig train --config experiments/finetune_image.py:init=runs/simclr,mode=full --workdir runs/ft
    jaxbig train --config experiments/finetune_image.py:init=runs/simclr,mode=features \
        --workdir runs/features
    jaxbig eval --workdir runs/probe          # evaluators again, on the best checkpoint

    jaxbig import path/to/hf_vit --workdir runs/vit       # a transformers ViTModel dir
    jaxbig train --config experiments/finetune_image.py:init=runs/vit,mode=lora --workdir runs/l

Arguments: init (a workdir; its config.json gives the backbone; '' = from scratch): a run
whose params have `encoder/...` (SimCLR, a classifier, an imported
ViTForImageClassification), or a bare image backbone (`model.name` 'vit' or 'resnet': an
imported ViTModel, loaded under `encoder/`); mode (full | linear_probe | features | lora),
steps, batch, lr, backbone_lr_mult (full mode), rank, alpha (lora), labels (the fraction of
the training labels used: 0.01 keeps 1 % of each class's rows, at least one; 1.0 = all;
`jaxbig.data.label_subset`), label_seed (which rows: nested, the 1 % rows are among the 10 %).

Modes: `full` trains everything; `linear_probe` trains the new head on the frozen backbone
(bit-identical after training); `features` embeds the dataset once with the frozen backbone
(`jaxbig.data.pipelines.features`) and trains the head on the stored features — no backprop and no
forward pass through the backbone per step; `lora` (ViT backbones) trains adapters on the
attention query / value kernels and the head. The best checkpoint by val/accuracy is kept.
The head reads the backbone's pooled features (`vit.Model.features`: HF's pooler output
when the checkpoint has a pooler, else the class token after the final LayerNorm). A ViT
with a fixed image_size gets the digits resized to it (`data.image_size`); its channels
must match the data's (digits: 1).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults finetune_image`: README's
commands as written, runs/simclr being README's SimCLR run; 2-core CPU):

    jaxbig train --config experiments/finetune_image.py:init=runs/simclr,mode=linear_probe \
        --workdir runs/probe
        val/accuracy 0.969 on the 359 held-out digits (chance 0.1); 0.4 min wall, 28 s CPU

Measured before 2026-12-06 under the old rules (not re-measured below; 2-core CPU;
backbone: `jaxbig train --config experiments/simclr.py:data=digits
--workdir runs/simclr`, its defaults, 300 steps; every mode with its defaults, 300 steps of
batch 128, lr 1e-2; val/accuracy on the 359 held-out digits, chance 0.1):

    mode           val/accuracy   notes
    features           0.967      11 s wall in all; 111 steps/s
    linear_probe       0.964      31 s wall; 21 steps/s
    full               0.986      33 s wall; 18 steps/s
    full, no init      0.994      from scratch: with every label, pretraining does not help

With few labels it does (benchmarks/research.py entry `label_efficiency`; the same SimCLR
backbone; 300 steps per run; final val/accuracy, mean +- std over 3 seeds, each seed its own
labelled rows; benchmarks/RESULTS_RESEARCH.md):

    labels             linear probe (features)   full from SimCLR   full from scratch
    0.01 (10 images)        0.752 +- 0.047         0.706 +- 0.035      0.396 +- 0.038
    0.1 (143)               0.935 +- 0.011         0.927 +- 0.021      0.869 +- 0.028
    1.0 (1,438)             0.963 +- 0.002         0.992 +- 0.003      0.985 +- 0.007

(logistic regression on the raw pixels of the same rows: 0.645 +- 0.115 / 0.928 / 0.972).

(These figures were measured before 2026-12-06, under the old rules: a mean of
per-batch means over num_batches x batch rows, rank-based weight decay, a
layout-dependent init — README "What the numbers mean"; not yet re-measured.)
"""


import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data import label_subset
from jaxbig.run import read_config

MODES = ('full', 'linear_probe', 'features', 'lora')
LORA_TARGETS = ['.*/(query|value)/kernel']  # a ViT's attention (jaxbig.lora)
BARE_BACKBONES = ('vit', 'resnet')  # runs whose whole model is an image backbone


def backbone_of(init: str) -> tuple[dict, list]:
    """(backbone model section, init_from.rename) of the run in `init`: the `backbone` of a
    SimCLR run or classifier (params already `encoder/...`), or a bare ViT / ResNet run's own
    model (an imported ViTModel; its params renamed under `encoder/`, its head dropped)."""
    model = read_config(init).model.to_dict()
    if 'backbone' in model:
        return model['backbone'], []
    if model.get('name') in BARE_BACKBONES:
        return dict(model, num_classes=0), [['^', 'encoder/']]
    raise ConfigError(f'experiments/finetune_image.py: init={init!r} has model.name='
                      f"{model.get('name')!r}, expected a run with a model.backbone "
                      f'(simclr, classifier) or a bare image backbone {BARE_BACKBONES}')


def get_config(arg=None):
    arg = parse_arg(
        arg, init='', mode='linear_probe', steps=300, batch=128, lr=1e-2, backbone_lr_mult=1.0,
        rank=8, alpha=16.0, labels=1.0, label_seed=0,
    )
    if arg.mode not in MODES:
        raise ConfigError(
            f'experiments/finetune_image.py: mode={arg.mode!r}, expected one of {MODES}'
        )
    backbone, rename = defaults.resnet_backbone('resnet18', 16), []
    if arg.init:
        backbone, rename = backbone_of(arg.init)
    if arg.mode == 'lora' and backbone['name'] != 'vit':
        raise ConfigError(
            f"experiments/finetune_image.py: mode=lora needs a ViT backbone, not "
            f"{backbone['name']!r} (lora adapts Dense/Linear kernels: ResNets are convolutions)"
        )
    images = dict(
        pipeline='views',
        name='digits',
        data_dir='',
        image_key='image',
        label_key='label',
        train_split='train',
        val_split='test',
        views=0,
        image_size=backbone.get('image_size', 0),  # a ViT fixed to its checkpoint's size
        folds=defaults.folds(),  # k-fold cross-validation of `train` (sweep.kfold); k=0: off
        label_fraction=float(arg.labels),  # jaxbig.data.label_subset; 1.0 = every label
        label_seed=int(arg.label_seed),
    )
    label_subset.settings(images, 'experiments/finetune_image.py: labels')  # one-line error
    c = ml_collections.ConfigDict()
    if arg.mode == 'features':
        if not arg.init:
            raise ConfigError('experiments/finetune_image.py: mode=features needs init=<workdir>')
        c.model = dict(name='linear', num_classes=10)
        c.data = dict(
            pipeline='features',
            source=images,
            backbone_from=arg.init,
            backbone_step=-1,
            train_split='train',
            val_split='test',
            embed_batch=256,
        )
    else:
        c.model = dict(name='classifier', backbone=backbone, num_classes=10, pooling='mean')
        c.data = images
    if arg.mode == 'lora':
        c.lora = dict(targets=LORA_TARGETS, rank=arg.rank, alpha=arg.alpha)
    c.loss = dict(name='classification', kind='softmax', label_smoothing=0.0)
    c.optimizer = defaults.optimizer(
        lr=arg.lr,
        warmup_steps='auto',
        weight_decay=1e-4,
        freeze=['encoder/.*'] if arg.mode in ('linear_probe', 'lora') else [],
        lr_mults=[['encoder/.*', arg.backbone_lr_mult]]
        if arg.mode == 'full' and arg.backbone_lr_mult != 1.0
        else [],
    )
    c.init_from = defaults.init_from(
        path=arg.init if arg.mode != 'features' else '', rename=rename,
        include=['encoder/.*'],
    )
    c.parallel = defaults.parallel()
    c.train = defaults.finetune_train(arg.steps, arg.batch)
    c.evals = dict(val=dict(type='classification', split='test', num_examples=0, batch_size=120))
    return c
