r"""CLIP (softmax) or SigLIP (sigmoid) image-text contrastive training on a two-tower model,
evaluated by zero-shot classification from class-name prompts and image<->text retrieval.

    jaxbig train --config experiments/clip.py --workdir runs/clip
    jaxbig train --config experiments/clip.py:loss=siglip --workdir runs/siglip
    jaxbig train --config experiments/clip.py:image=vit,image_width=0,text_pool=eos,text_depth=2,\
steps=600 --workdir runs/clip_vit      # the ViT + transformer towers (the defaults before
                                       # 2026-12-07)
    jaxbig import path/to/hf_clip --workdir runs/hf_clip     # a transformers CLIPModel dir
    jaxbig train --config experiments/clip.py:init=runs/hf_clip --workdir runs/clip_ft

Arguments (`experiments/clip.py:key=value,...`):
  loss       'clip' (temperature init 0.07) | 'siglip' (t' = log 10, b = -10)
  data       'shapes' (embedded: drawn shapes with compositional captions, 32x32;
             resolution / num_train / num_test set the builder config) |
             'coco_captions' (prepared in data.data_dir; byte tokenizer, no zero-shot)
  image      image tower: 'cnn' (3 conv layers, GroupNorm) | 'vit' | 'resnet18'
  image_width  its width (cnn: base channels, 32 -> 32-64-128; 0 = `width`)
  text_pool  text tower pooling: 'mean' | 'eos'
  text_depth transformer layers of the text tower (0: a bag of word + position embeddings)
  width      text tower width (and the image tower's when image_width=0); embed: shared
             embedding width; batch; lr
  steps      0 = the recipe's: 800 for clip, 1,600 for siglip (RECIPE_STEPS)
  init       a two-tower workdir to start from ('' = from scratch), e.g. an imported CLIP:
             its model section (image / text / width / embed are then ignored), caption
             tokenizer (data.tokenizer: the checkpoint's tokenizer.json, data.eos_id), text
             length and image size are taken over and its params loaded (init_from);
             loss=siglip adds a fresh logit bias

Zero-shot on shapes: the 24 colour-shape classes ('red circle', ...; chance 4.2 %), each
prompted with the 18 size x position templates ('a small {} at the top left', ...)
and ensembled.

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults clip`: README's
commands as written; shapes 32x32, 5,000 train / 1,000 test; 2-core CPU):

    jaxbig train --config experiments/clip.py --workdir runs/clip
        zero-shot 92.3 % (chance 4.2 %); retrieval i2t R@1/5/10 97.1 / 99.9 / 100 %,
        t2i 98.9 / 100 / 100 % (i2t R@1 chance 0.3 %); exp(t) 14.3 -> 20.4; 2.1 min wall,
        194 s CPU
    jaxbig train --config experiments/clip.py:loss=siglip --workdir runs/siglip
        zero-shot 96.1 %; retrieval i2t R@1/5/10 98.2 / 99.9 / 100 %, t2i 99.7 / 100 / 100 %;
        exp(t') 10.0 -> 14.3, b -10 -> -10.3; 4.4 min wall, 377 s CPU

The recipe (RECIPE_STEPS' comment) came out of benchmarks/research/NOTES.md: with the old
defaults' ViT image tower and 2-layer transformer text tower (the command above with
image=vit, measured before 2026-12-06 at 600 steps) zero-shot was 27.3 % (CLIP) and 28.6 %
(SigLIP), retrieval i2t R@1 55.0 / 18.7 %: colour is right in >99.7 % of zero-shot answers
in every run, and the errors are shapes, which the ViT learns far more slowly. The entries
of benchmarks/research.py vary the recipe's length and batch (RESULTS_RESEARCH.md): at 400
steps CLIP 51.5 %, SigLIP 27.7 %; SigLIP at 800 steps 71.3 % (10x the learning rate on its
t' and b via optimizer.lr_mults: 62.1 %, no better); across batch sizes 16-256 at equal
examples CLIP stays ahead of SigLIP. (This paragraph's figures were measured 2026-12-02,
under the old rules of README "What the numbers mean", and not re-measured.)
"""

import math

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders import shapes
from jaxbig.run import read_config

LOSSES = {
    'clip': dict(logit_scale_init=math.log(1 / 0.07), use_bias=False, logit_bias_init=0.0),
    'siglip': dict(logit_scale_init=math.log(10.0), use_bias=True, logit_bias_init=-10.0),
}


# The recipe behind the figures quoted below (found in benchmarks/research/NOTES.md): a plain
# 3-layer CNN image tower (base width 32: 32-64-128 channels; the ViT learns the shapes far
# more slowly) and a bag-of-words text tower (no layers: the mean of word + position
# embeddings), so a class's prompt-ensemble mean keeps its colour and shape and averages size
# and position out. SigLIP needs twice CLIP's steps to reach the same zero-shot accuracy.
RECIPE_STEPS = {'clip': 800, 'siglip': 1600}


def image_tower(name: str, width: int) -> dict:
    if name == 'vit':
        return defaults.vit_backbone(width, depth=3, patch_size=4)
    if name in ('resnet18', 'cnn'):
        return defaults.resnet_backbone(name, width // 4 if name == 'resnet18' else width)
    raise ConfigError(f"experiments/clip.py: image={name!r}, expected 'vit', 'resnet18' or 'cnn'")


def _init_source(init: str, loss: str) -> dict:
    """The model section (with `loss`'s logit bias switch), caption tokenizer, eos id, text
    length and image size of the two-tower run in `init`."""
    source = read_config(init)
    model = source.model.to_dict()
    if model.get('name') != 'two_tower':
        raise ConfigError(f"experiments/clip.py: init={init!r} has model.name="
                          f"{model.get('name')!r}, expected a 'two_tower' run (e.g. an "
                          'imported CLIPModel)')
    model.update(use_bias=LOSSES[loss]['use_bias'],
                 logit_bias_init=LOSSES[loss]['logit_bias_init'])
    data = source.get('data') or {}
    return dict(model=model, tokenizer=data.get('tokenizer', 'bytes'),
                eos_id=data.get('eos_id', -1), max_len=model['text'].get('max_len', 32),
                image_size=model['image'].get('image_size', 0))


def get_config(arg=None):
    arg = parse_arg(
        arg,
        loss='clip',
        data='shapes',
        image='cnn',
        image_width=32,
        text_pool='mean',
        text_depth=0,
        width=64,
        embed=64,
        steps=0,
        batch=128,
        lr=1e-3,
        init='',
    )
    if arg.loss not in LOSSES:
        raise ConfigError(f'experiments/clip.py: loss={arg.loss!r}, expected one of {list(LOSSES)}')
    steps = arg.steps or RECIPE_STEPS[arg.loss]
    is_shapes = arg.data == 'shapes'
    tokenizer, max_len = ('words', 12) if is_shapes else ('bytes', 64)
    vocab = 3 + len(__import__('jaxbig.data.text.captions', fromlist=['x']).shapes_words())
    c = ml_collections.ConfigDict()
    c.model = dict(
        name='two_tower',
        image=image_tower(arg.image, arg.image_width or arg.width),
        text=dict(
            name='text_encoder',
            vocab_size=vocab if is_shapes else 258,
            max_len=max_len,
            width=arg.width,
            depth=arg.text_depth,
            num_heads=4,
            mlp_dim=2 * arg.width,
            pool=arg.text_pool,
            pad_id=0,
            eos_id=1,
            dropout=0.0,
            scan_layers=arg.text_depth > 0,
        ),
        embed_dim=arg.embed,
        **LOSSES[arg.loss],
    )
    if arg.init:
        source = _init_source(arg.init, arg.loss)
        c.model = source['model']
        tokenizer, max_len = source['tokenizer'], source['max_len']
    c.data = dict(
        pipeline='image_text',  # jaxbig.data.pipelines.image_text: image, caption tokens, label
        name=arg.data,
        data_dir='',  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
        resolution=32,
        num_train=5000,
        num_test=1000,
        shapes_seed=0,  # shapes builder config
        image_key='image',
        text_key='caption' if is_shapes else 'captions/text',
        label_key='label' if is_shapes else '',
        tokenizer=tokenizer,
        eos_id=source['eos_id'] if arg.init else -1,  # a tokenizer.json's pooling id
        max_len=max_len,
        image_size=source['image_size'] if arg.init else (0 if is_shapes else 64),
        train_split='train',
        val_split='test' if is_shapes else 'val',
    )
    if arg.init and is_shapes and c.data.image_size == c.data.resolution:
        c.data.image_size = 0  # drawn at the tower's size already
    c.init_from = defaults.init_from(path=arg.init)
    c.loss = dict(name='multimodal', kind=arg.loss, max_logit_scale=math.log(100.0))
    c.optimizer = defaults.optimizer(
        lr=arg.lr,
        warmup_steps='auto',
        min_lr_ratio=0.0,
        b2=0.98,
        eps=1e-6,
        weight_decay=1e-4,
    )
    c.parallel = defaults.parallel()
    c.train = defaults.pretrain_train(steps, arg.batch)
    c.evals = dict(
        retrieval=dict(
            type='retrieval', every=0, split='', max_examples=1000, ks=(1, 5, 10), batch_size=0
        ),
    )
    if is_shapes:
        templates = [f'a {size} {{}} {pos}' for size in shapes.SIZES for pos in shapes.POSITIONS]
        c.evals.zero_shot = dict(
            type='zero_shot',
            every=0,
            split='',
            class_names=[],
            templates=templates,
            max_examples=0,
            batch_size=0,
        )
    return c
