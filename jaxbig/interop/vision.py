"""Hugging Face encoder families <-> jaxbig's ViT (`jaxbig.models.vit`), classifier on a ViT
backbone, and two-tower CLIP (`jaxbig.models.two_tower`): config fields and tensor names,
both ways, for the loops `hf.import_dir` / `hf.export_run` hand them to (the shared
name-mapped loops are interop/mapped.py's).

    ViTModel                    -> model.name='vit' (pooler_dim when the checkpoint has
                                   HF's pooler: features = tanh(dense(CLS)), HF's
                                   pooler_output; `Model.tokens` = last_hidden_state), in
                                   experiments/simclr.py's sections (views, NT-Xent,
                                   linear-probe and k-NN evals)
    ViTForImageClassification   -> model.name='classifier' on a 'vit' backbone (`encoder/...`
                                   + `head/...`, as experiments/finetune_image.py builds it),
                                   in finetune_image's sections (classification loss, val
                                   accuracy)
    CLIPModel                   -> model.name='two_tower' (image 'vit', text 'text_encoder',
                                   causal, EOS pooling; in experiments/clip.py's sections with
                                   data=coco_captions) — see interop/clip.py

The data sections are placeholders (cifar10 / coco_captions at the checkpoint's image size,
byte captions, or CLIP's own tokenizer.json when the directory has one): point them at your
data with --config overrides. Pixel normalisation is the data pipeline's ([-1, 1]; CLIP
checkpoints expect their own mean / std). Params keep the checkpoint's dtype (bfloat16 /
float16 checkpoints import as such, the model's `dtype` / `param_dtype` set to it; a
classifier's head stays float32) unless `param_dtype` (`--param-dtype float32`) says
otherwise. Export
writes a jaxbig 'vit' without pooler_dim as ViTModel without a pooler: load it with
`ViTModel.from_pretrained(dir, add_pooling_layer=False)`; class labels are LABEL_i.

Tensor maps are interop/mapped.py's format: {hf name: (canonical jaxbig path, to_jaxbig,
to_hf)}, every layer spelt out (`encoder/layers_3/query/kernel`).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from jaxbig import defaults
from jaxbig import experiment
from jaxbig.config import ConfigError
from jaxbig.interop.mapped import (ACTS, ACTS_BACK, _c, export_mapped, import_mapped, need,
                                   same, square, transposed)
from jaxbig.interop.tensors import TensorReader

VIT_ARCHS = ('ViTModel', 'ViTForImageClassification')

IGNORED = ('.position_ids',)  # buffers older checkpoints store


# ----------------------------------------------------------------------------- shared maps

VIT_BLOCK = dict(query='attention.attention.query', key='attention.attention.key',
                 value='attention.attention.value', out='attention.output.dense',
                 mlp_in='intermediate.dense', mlp_out='output.dense',
                 attn_norm='layernorm_before', mlp_norm='layernorm_after')


def encoder_tensors(jb: str, hf: str, names: dict, m) -> dict:
    """Layer i of an Encoder at jaxbig `{jb}layers_{i}/` <-> HF `{hf}{i}.` (block names
    `names`); m: a module with depth/width/num_heads (vit.Model or text_encoder.Model)."""
    e, h = m.width, m.num_heads
    d = e // h
    qkv = ((lambda w: _c(w.T).reshape(e, h, d)), (lambda k: _c(k.reshape(e, h * d).T)))
    qkv_b = ((lambda b: b.reshape(h, d)), (lambda b: b.reshape(h * d)))
    out_k = ((lambda w: _c(w.T).reshape(h, d, e)), (lambda k: _c(k.reshape(h * d, e).T)))
    out = {}
    for i in range(m.depth):
        p, q = f'{jb}layers_{i}/', f'{hf}{i}.'
        for ours in ('query', 'key', 'value', 'out', 'mlp_in', 'mlp_out'):
            kernel = {'out': out_k, 'mlp_in': transposed(), 'mlp_out': transposed()}.get(ours, qkv)
            out[f'{q}{names[ours]}.weight'] = (f'{p}{ours}/kernel', *kernel)
            bias = qkv_b if ours in ('query', 'key', 'value') else same()
            out[f'{q}{names[ours]}.bias'] = (f'{p}{ours}/bias', *bias)
        for ours in ('attn_norm', 'mlp_norm'):
            out[f'{q}{names[ours]}.weight'] = (f'{p}{ours}/scale', *same())
            out[f'{q}{names[ours]}.bias'] = (f'{p}{ours}/bias', *same())
    return out


def norm_tensors(jb: str, hf: str) -> dict:
    return {f'{hf}.weight': (f'{jb}/scale', *same()), f'{hf}.bias': (f'{jb}/bias', *same())}


def patch_tensors(jb: str, hf: str) -> dict:
    """HF conv weight [out, in, kh, kw] <-> flax kernel [kh, kw, in, out]."""
    return {hf: (f'{jb}embed/Conv_0/kernel', lambda w: _c(w.transpose(2, 3, 1, 0)),
                 lambda k: _c(k.transpose(3, 2, 0, 1)))}


def vit_reasons(v, clip: bool = False) -> list[str]:
    """The fields of a jaxbig vit.Model that keep it from HF's ViT (or CLIP's image tower)."""
    want = dict(pool='cls', positions='all', use_bias=True, patch_bias=not clip,
                pre_norm=clip, final_norm='pooled' if clip else 'tokens')
    if clip:
        want.update(pooler_dim=0, num_classes=0)
    bad = [f'{k}={getattr(v, k)!r}' for k, w in want.items() if getattr(v, k) != w]
    return bad + ([f'num_heads={v.num_heads} (not dividing width={v.width})']
                  if v.width % v.num_heads else [])


def image_side(v, shapes: dict, jb: str) -> int:
    """The image size of a ViT: its image_size, else the side its position table implies."""
    if v.image_size:
        return v.image_size
    n = shapes[f'{jb}embed/pos_embedding'][0] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f'model: {n} patch positions are not a square grid; set '
                          'model image_size')
    return side * v.patch_size


# ----------------------------------------------------------------------------- ViT

def vit_section(hf: dict, pooler_dim: int, num_classes: int = 0,
                dtype: str = 'float32') -> dict:
    """The jaxbig 'vit' model section of a HF ViTConfig (params and compute in `dtype`)."""
    act = hf.get('hidden_act', 'gelu')
    need('hidden_act', act, act in ACTS, f'expected one of {sorted(ACTS)}')
    need('qkv_bias', hf.get('qkv_bias', True), hf.get('qkv_bias', True), 'expected true')
    image = square('image_size', hf.get('image_size', 224))
    patch = square('patch_size', hf.get('patch_size', 16))
    need('image_size', image, image % patch == 0, f'not a multiple of patch_size={patch}')
    width, heads = hf.get('hidden_size', 768), hf.get('num_attention_heads', 12)
    need('num_attention_heads', heads, width % heads == 0, f'not dividing hidden_size={width}')
    if pooler_dim:
        pooler_act = hf.get('pooler_act', 'tanh')
        need('pooler_act', pooler_act, pooler_act == 'tanh', "expected 'tanh'")
    depth = hf.get('num_hidden_layers', 12)
    return dict(name='vit', patch_size=patch, width=width, depth=depth, num_heads=heads,
                mlp_dim=hf.get('intermediate_size', 3072), pool='cls', dropout=0.0,
                scan_layers=depth > 6, num_classes=num_classes, use_bias=True,
                norm_eps=hf.get('layer_norm_eps', 1e-12), mlp_act=ACTS[act],
                positions='all', patch_bias=True, pre_norm=False, final_norm='tokens',
                pooler_dim=pooler_dim, image_size=image, dtype=dtype, param_dtype=dtype)


def _vit_layout(model):
    """(vit module, jaxbig backbone prefix, head path or '') of a jaxbig vit / classifier."""
    from jaxbig import models
    from jaxbig.models import classifier, vit

    if isinstance(model, vit.Model):
        return model, '', 'head' if model.num_classes else ''
    if isinstance(model, classifier.Model) and dict(model.backbone).get('name') == 'vit':
        kwargs = dict(model.backbone)
        return models.get_model(kwargs.pop('name'), **kwargs), 'encoder/', 'head'
    return None


def vit_tensors(model, hf_prefix: str | None = None) -> dict:
    v, jb, head = _vit_layout(model)
    hf = ('vit.' if head else '') if hf_prefix is None else hf_prefix
    out = {f'{hf}embeddings.cls_token': (f'{jb}embed/cls', *same()),
           f'{hf}embeddings.position_embeddings': (f'{jb}embed/pos_embedding',
                                                   lambda x: x[0], lambda x: x[None]),
           f'{hf}embeddings.patch_embeddings.projection.bias': (f'{jb}embed/Conv_0/bias',
                                                                *same())}
    out.update(patch_tensors(jb, f'{hf}embeddings.patch_embeddings.projection.weight'))
    out.update(encoder_tensors(f'{jb}encoder/', f'{hf}encoder.layer.', VIT_BLOCK, v))
    out.update(norm_tensors(f'{jb}encoder/final_norm', f'{hf}layernorm'))
    if v.pooler_dim:
        out[f'{hf}pooler.dense.weight'] = (f'{jb}pooler/kernel', *transposed())
        out[f'{hf}pooler.dense.bias'] = (f'{jb}pooler/bias', *same())
    if head:
        out['classifier.weight'] = (f'{head}/kernel', *transposed())
        out['classifier.bias'] = (f'{head}/bias', *same())
    return out


def vit_hf(model, shapes: dict) -> dict:
    v, jb, head = _vit_layout(model)
    out = dict(architectures=[VIT_ARCHS[bool(head)]], model_type='vit', hidden_size=v.width,
               num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
               intermediate_size=v.mlp_dim, hidden_act=ACTS_BACK[v.mlp_act],
               layer_norm_eps=v.norm_eps, image_size=image_side(v, shapes, jb),
               patch_size=v.patch_size, num_channels=shapes[f'{jb}embed/Conv_0/kernel'][2],
               qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               pooler_output_size=v.pooler_dim or v.width, pooler_act='tanh')
    if head:
        k = shapes[f'{head}/kernel'][-1]
        out.update(id2label={str(i): f'LABEL_{i}' for i in range(k)},
                   label2id={f'LABEL_{i}': i for i in range(k)})
    return out


def _image_data(image_size: int, views: int) -> dict:
    data = dict(pipeline='views', name='cifar10', data_dir='', image_key='image',
                label_key='label', train_split='train', val_split='test', views=views,
                image_size=image_size)
    if views:
        data.update(crop_min_scale=0.08, flip=True, jitter_strength=0.5, jitter_prob=0.8,
                    grayscale_prob=0.2, blur_prob=0.0)
    return data


def vit_run_config(hf: dict, names, dtype: str = 'float32') -> ml_collections.ConfigDict:
    """finetune_image's sections (ViTForImageClassification: classifier, mode full) or
    simclr's (ViTModel: the bare ViT, its features probed), data a placeholder."""
    arch = hf['architectures'][0]
    c = ml_collections.ConfigDict()
    if arch == 'ViTForImageClassification':
        labels = len(hf.get('id2label') or {}) or hf.get('num_labels', 2)
        need('num_labels', labels, labels > 0, 'expected a classifier head')
        c.model = dict(name='classifier', backbone=vit_section(hf, 0, dtype=dtype),
                       num_classes=labels,
                       pooling='mean')
        c.data = _image_data(c.model.backbone.image_size, views=0)
        c.loss = dict(name='classification', kind='softmax', label_smoothing=0.0)
        c.optimizer = defaults.optimizer(lr=1e-4, warmup_steps='auto', weight_decay=1e-4)
        c.init_from = defaults.init_from()
        c.parallel = defaults.parallel()
        c.train = defaults.finetune_train(300, 128)
        c.evals = dict(val=dict(type='classification', split='test', num_examples=0,
                                batch_size=120))
    else:
        prefix = 'vit.' if 'vit.embeddings.cls_token' in names else ''
        pooler = (hf.get('pooler_output_size') or hf.get('hidden_size', 768)
                  if f'{prefix}pooler.dense.weight' in names else 0)
        c.model = vit_section(hf, pooler, dtype=dtype)
        c.data = _image_data(c.model.image_size, views=2)
        c.loss = dict(name='contrastive', temperature=0.2)
        c.optimizer = defaults.optimizer(lr=2e-3, warmup_steps='auto', min_lr_ratio=0.0,
                                         weight_decay=1e-4)
        c.parallel = defaults.parallel()
        c.train = defaults.pretrain_train(300, 256)
        c.evals = dict(probe=defaults.features_eval('linear_probe'),
                       knn=defaults.features_eval('knn'))
    return experiment.resolve_auto(c)


def vit_example(hf: dict) -> tuple:
    """Init inputs of an imported ViT: one image of the checkpoint's size and channels."""
    side = square('image_size', hf.get('image_size', 224))
    return (np.zeros((1, side, side, hf.get('num_channels', 3)), np.float32),)


DTYPES = {'F32': 'float32', 'BF16': 'bfloat16', 'F16': 'float16'}  # safetensors' names


def stored_dtype(reader) -> str:
    """The floating dtype the checkpoint's weights are stored in (its first weight's)."""
    floats = [n for n in reader.names() if reader.dtype(n) in DTYPES]
    return DTYPES[reader.dtype(floats[0])] if floats else 'float32'
