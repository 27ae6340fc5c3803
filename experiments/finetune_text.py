r"""Fine-tune a GPT (or a BERT) on the embedded text task: which standard-library package is a
snippet of source from? (the packages with >= 2 files in both splits: 9 on CPython 3.11;
validation files are never trained on.)

    jaxbig train --config experiments/lm.py --workdir runs/lm                 # pretrain
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=full --workdir runs/ft
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=linear_probe \
        --workdir runs/probe
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=features \
        --workdir runs/features
    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=lora --workdir runs/lora
    jaxbig lora merge --workdir runs/lora --out runs/lora_merged  # plain weights
    jaxbig train --config experiments/finetune_text.py --workdir runs/scratch  # no init
    jaxbig train --config experiments/mlm.py --workdir runs/mlm               # BERT backbone
    jaxbig train --config experiments/finetune_text.py:init=runs/mlm,mode=lora --workdir runs/b
    jaxbig train --config experiments/finetune_text.py:data=imdb_reviews --workdir runs/imdb
    jaxbig train --config experiments/finetune_text.py:data=ag_news_subset,init=runs/lm \
        --workdir runs/ag            # any prepared TFDS set with a Text and a ClassLabel
    jaxbig train --config experiments/finetune_text.py:data=reviews.jsonl,init=runs/lm \
        --workdir runs/mine          # your own {"text", "label"} records (JSONL / Parquet,
                                     # or a directory a Hugging Face save_to_disk wrote)

Arguments: init (a pretraining workdir; its config.json gives the backbone's shape, its
latest checkpoint the weights; '' = from scratch, tiny GPT), mode (full | linear_probe |
features | lora), steps, batch, seq, lr (0 = the mode's default: 1e-2 for a head on frozen
features, linear_probe and features; 1e-3 otherwise), pooling ('last' real token | 'mean'
under the mask; '' = mean for linear_probe / features, last otherwise; a BERT: 'mean' |
'cls', '' = mean), backbone_lr_mult
(full mode: learning-rate multiplier of the backbone), rank, alpha (lora), examples
(features: training snippets to embed), data ('pystdlib': the embedded snippet task | the
name of a prepared TFDS text classification dataset, array_record: each example's text
(`text`, or every Text feature joined, e.g. ag_news' description and title; or
data.text_key) truncated to `seq` tokens, its ClassLabel the label; model.num_classes
follows the ClassLabel and the evaluator names its classes; a dataset without a
'validation' split is evaluated on its 'test' split | a JSONL / Parquet file, directory
or glob of {"text", "label"} records: data.text_key / data.label_key choose the fields,
the classes are the label values found, data.splits holds out 1 % by default).

The head is new (a zero-initialised Dense on the pooled features); `init_from` loads every
`encoder/...` parameter from the LM checkpoint. linear_probe freezes `encoder/.*`
(bit-identical after training). features embeds `examples` fixed training snippets and the
1,024 validation snippets once with the frozen LM (`jaxbig.data.pipelines.features`) and trains a
`linear` head on them. lora adds rank-8 adapters to the attention query/value kernels
(`jaxbig.lora`; `lora.targets` is a list of regexes) and freezes `encoder/.*`: adapters and
head train. The best checkpoint by val/accuracy is kept in `<workdir>/best/`; training stops
early after `patience` evaluations without improvement.

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults finetune_text`: README's
commands as written, runs/lm being README's default LM run; 2-core CPU):

    jaxbig train --config experiments/finetune_text.py:init=runs/lm,mode=full --workdir runs/ft
        val/accuracy 0.371 on the 1,024 validation snippets (chance 0.111), macro F1 0.330;
        2.3 min wall, 171 s CPU

Measured before 2026-12-06 under the old rules (not re-measured below; 2-core CPU;
backbone: `jaxbig train --config experiments/lm.py --workdir runs/lm
--config.train.steps=300`, val loss 1.65 nats/byte; every mode with its defaults, 300 steps
of batch 32 x 128 bytes; val/accuracy on 1,024 validation snippets, chance 0.111):

    mode           val/accuracy   notes
    features           0.350      41 s wall in all (embedding 5,120 snippets), then 2,500 steps/s
    linear_probe       0.336      141 s wall; 2.7 steps/s (forward and backward through the LM)
    lora               0.320      16,384 adapter parameters train (1.85 % of the model's)
    full               0.288
    full, no init      0.195      from scratch

At equal load lora ran ~2.4 steps/s and full ~1.5. With last-token pooling the frozen modes
reach only 0.19-0.21, hence mean pooling for them.

Against the same GPT untrained (benchmarks/research.py entry `text_finetune`: the default
experiments/lm.py backbone, 600 steps; every mode's defaults at 200 steps; mean +- std over
3 seeds): features 0.349 +- 0.015 vs 0.273 +- 0.011 untrained, linear_probe 0.333 +- 0.011
vs 0.270 +- 0.014, full 0.333 +- 0.013 vs 0.201 +- 0.018, lora 0.240 +- 0.019 vs
0.245 +- 0.004 (no gain with last-token pooling); lora with pooling=mean 0.301 +- 0.008 vs
0.256 +- 0.005 (entry `text_lora_mean`; benchmarks/RESULTS_RESEARCH.md).

A BERT backbone (init = an experiments/mlm.py run, or an imported BertModel /
BertForMaskedLM) pools inside the encoder, `model.backbone.pool`: pooling 'mean' (the default
in every mode) | 'cls' (its class token); it is given the snippet's mask, so it attends to
the real bytes only, and its MLM head is dropped (`head='none'`). mode=features embeds with
the MLM run's own model.pool. The LoRA targets name BERT's attention kernels as well.

GPT vs BERT backbone at equal pretraining budget (measured in one session, both on the same
loaded 2-core CPU):
300 steps of batch 32 x 128 bytes of the corpus each (1.23 M bytes), both depth 4, width
128, MLP 384 (the GPT's SwiGLU MLP has a third matrix: 886 k parameters and ~1.3x the
FLOPs per token of BERT's 712 k). GPT: `experiments/lm.py --config.train.steps=300`, val
1.64 nats per next byte; BERT: `experiments/mlm.py:steps=300` (post-norm, rotary), val 1.93
nats per masked byte, masked accuracy 0.52. Each mode with its defaults, 300 steps;
val/accuracy at step 300:

    mode            GPT     BERT    BERT, pooling=cls
    features       0.333   0.308
    linear_probe   0.314   0.302
    lora           0.284   0.321        0.254
    full           0.265   0.293        0.271

(The GPT figures of this session are 0.02-0.04 below the table above: the same configs in
an earlier session, on another CPU.) Frozen, the GPT's features are a little better; trained
(lora, full), BERT's are, with mean pooling: MLM does not train the class token's output (no
next-sentence task), so 'cls' lags. Wall time per mode as for the GPT (40 s features, 4-6
min the others on a loaded machine).

(These figures were measured before 2026-12-06, under the old rules: a mean of
per-batch means over num_batches x batch rows, rank-based weight decay, a
layout-dependent init — README "What the numbers mean"; not yet re-measured.)
"""


import os

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.bert import POOLS
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config

MODES = ('full', 'linear_probe', 'features', 'lora')
LORA_TARGETS = ['.*attn/(query|value)/kernel']


def _is_path(data: str) -> bool:
    """data= names files (a path, a directory or a glob of JSONL / Parquet), not a dataset."""
    from jaxbig.data.text.file_documents import SUFFIXES

    return os.path.exists(data) or any(c in data for c in '/*?') or data.endswith(SUFFIXES)


def get_config(arg=None):
    arg = parse_arg(
        arg,
        init='',
        mode='full',
        steps=300,
        batch=32,
        seq=128,
        lr=0.0,
        backbone_lr_mult=1.0,
        pooling='',
        rank=8,
        alpha=16.0,
        examples=4096,
        data='pystdlib',
    )
    if arg.mode not in MODES:
        raise ConfigError(
            f'experiments/finetune_text.py: mode={arg.mode!r}, expected one of {MODES}'
        )
    if arg.mode == 'features' and not arg.init:
        raise ConfigError('experiments/finetune_text.py: mode=features needs init=<workdir>')
    frozen = arg.mode in ('linear_probe', 'features')  # a head on fixed backbone features
    lr = arg.lr or (1e-2 if frozen else 1e-3)
    pooling = arg.pooling or ('mean' if frozen else 'last')
    backbone = defaults.gpt(SIZES['tiny'], scan_layers=True, remat='none')
    tokenizer = dict(tokenizer='bytes', eos_id=-1)
    if arg.init:  # the backbone's shape and tokenizer (an imported model's tokenizer.json)
        source = read_config(arg.init)
        backbone = source.model.to_dict()
        data = source.get('data') or {}
        tokenizer = dict(tokenizer=data.get('tokenizer', 'bytes'), eos_id=data.get('eos_id', -1))
    if backbone['name'] == 'bert':  # pooled inside the encoder: the mean or its class token
        pooling = arg.pooling or 'mean'
        _check_bert_pooling(arg, backbone, pooling)
        if arg.mode == 'features':  # embedded by the pretraining run's own model
            pooling = backbone['pool']
        backbone = dict(backbone, pool=pooling, head='none')
    files = _is_path(arg.data)  # your JSONL / Parquet records {text, label}
    saved = files and any(os.path.isfile(os.path.join(arg.data, name))  # save_to_disk's
                          for name in ('dataset_dict.json', 'state.json'))
    snippets = dict(
        **tokenizer,
        pipeline='text_classes',
        # or a prepared TFDS text + ClassLabel dataset
        name=('hf_disk' if saved else 'files') if files else arg.data,
        path=arg.data if files else '',
        splits='',  # files: 'validation=0.01' (default) or name=glob pairs
        data_dir='',
        # TFDS: '' = `text`, else every Text feature (jaxbig/data/pipelines/text_classes.py)
        text_key='',
        label_key='',  # TFDS: '' = its only ClassLabel feature, whose names are the classes
        seq_len=arg.seq,
        min_files=2,
        train_split='train',
        val_split='validation',
        folds=defaults.folds(),  # k-fold cross-validation of `train` (sweep.kfold); k=0: off
    )
    # auto: the packages found in the running Python's stdlib (9 on 3.11), the ClassLabel's,
    # or the labels found in the files
    num_classes = 'auto'
    # snippets are drawn without end: score a fixed 1,024 of them; a TFDS split whole
    evals = dict(type='classification', split='validation',
                 num_examples=1024 if arg.data == 'pystdlib' else 0, batch_size=64)
    c = ml_collections.ConfigDict()
    if arg.mode == 'features':
        c.model = dict(name='linear', num_classes=num_classes)
        c.data = dict(
            pipeline='features',
            source=snippets,
            backbone_from=arg.init,
            backbone_step=-1,
            pooling=pooling,
            train_split='train',
            val_split='validation',
            embed_batch=256,
            embed_examples=dict(
                train=arg.examples, validation=evals['num_examples'],  # 0: the whole split
                fold=evals['num_examples'],  # with data.source.folds
            ),
        )
    else:
        c.model = dict(name='classifier', backbone=backbone, num_classes=num_classes,
                       pooling='mean' if backbone['name'] == 'bert' else pooling)
        c.data = snippets
    if arg.mode == 'lora':
        c.lora = dict(targets=LORA_TARGETS, rank=arg.rank, alpha=arg.alpha)
    c.loss = dict(name='classification', kind='softmax', label_smoothing=0.0)
    c.optimizer = defaults.optimizer(
        lr=lr,
        warmup_steps='auto',
        weight_decay=0.01,
        freeze=['encoder/.*'] if arg.mode in ('linear_probe', 'lora') else [],
        lr_mults=[['encoder/.*', arg.backbone_lr_mult]]
        if arg.mode == 'full' and arg.backbone_lr_mult != 1.0
        else [],
    )
    c.init_from = defaults.init_from(
        path=arg.init if arg.mode != 'features' else '',
        rename=[['^', 'encoder/']], include=['encoder/.*'],
    )
    c.parallel = defaults.parallel()
    c.train = defaults.finetune_train(arg.steps, arg.batch)
    c.evals = dict(val=evals)
    return c


def _check_bert_pooling(arg, backbone: dict, pooling: str):
    """A BERT backbone pools inside (`model.pool`: 'cls' | 'mean'); in mode=features the
    pretraining run's own model.pool applies (data.pipelines.features embeds with that model)."""
    if pooling not in POOLS:
        raise ConfigError(f'experiments/finetune_text.py: pooling={pooling!r} for a BERT '
                          f'backbone, expected one of {POOLS}')
    if arg.mode == 'features' and arg.pooling and arg.pooling != backbone['pool']:
        raise ConfigError(f'experiments/finetune_text.py: mode=features embeds with '
                          f"{arg.init}'s own model.pool={backbone['pool']!r}; drop pooling= "
                          'or pretrain with that pool')
