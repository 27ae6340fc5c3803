"""Hugging Face CLIPModel <-> jaxbig's two-tower model (`jaxbig.models.two_tower`): config
fields and tensor names, both ways (the loops are interop/mapped.py's).

    vision_model   -> image tower 'vit': class token first and positions over all 1 + N
                      tokens, no patch bias, pre_norm (pre_layrnorm), final_norm='pooled'
                      (post_layernorm on the CLS only), q/k/v/out/MLP biases, quick_gelu
    text_model     -> text tower 'text_encoder': causal, biases, final LayerNorm, pooled
                      at the first eos_token_id ('eos'), or, when the config says
                      eos_token_id=2 (older checkpoints), at the highest token id
                      ('argmax', HF's legacy rule); pad_id=-1 (HF derives no mask from ids)
    visual_projection / text_projection (no bias) -> image_proj / text_proj
    logit_scale    -> logit_scale (logits = exp(t) * image . text)

One difference is left: a text with no eos pools at its last position in jaxbig, at
position 0 in HF (the 'eos' rule; real tokenizers always append the eot).

The directory's tokenizer.json becomes the run's caption tokenizer (data.tokenizer, read by
`captions.FileCaptionTokenizer`: <|startoftext|> ... <|endoftext|>, padded with the eot),
and data.eos_id the id the text tower pools at ('argmax' checkpoints: -1, the file's own
<|endoftext|>), so training captions and zero-shot prompts are tokenized as transformers'
CLIPTokenizer does.
"""

from __future__ import annotations

import ml_collections

from jaxbig import defaults
from jaxbig import experiment
from jaxbig.config import ConfigError
from jaxbig.interop import vision
from jaxbig.interop.mapped import ACTS, ACTS_BACK, need, same, square, transposed

ARCHS = ('CLIPModel',)
CLIP_BLOCK = dict(query='self_attn.q_proj', key='self_attn.k_proj', value='self_attn.v_proj',
                  out='self_attn.out_proj', mlp_in='mlp.fc1', mlp_out='mlp.fc2',
                  attn_norm='layer_norm1', mlp_norm='layer_norm2')


DEFAULTS = {'vision_config': (768, 12, 3072), 'text_config': (512, 8, 2048)}  # HF's


def _tower_common(cfg: dict, where: str) -> dict:
    act = cfg.get('hidden_act', 'quick_gelu')
    need(f'{where}.hidden_act', act, act in ACTS, f'expected one of {sorted(ACTS)}', 'CLIP')
    width, heads, mlp = DEFAULTS[where]
    width, heads = cfg.get('hidden_size', width), cfg.get('num_attention_heads', heads)
    need(f'{where}.num_attention_heads', heads, width % heads == 0,
         f'not dividing hidden_size={width}', 'CLIP')
    depth = cfg.get('num_hidden_layers', 12)
    return dict(width=width, depth=depth, num_heads=heads,
                mlp_dim=cfg.get('intermediate_size', mlp), dropout=0.0,
                scan_layers=depth > 6, use_bias=True, norm_eps=cfg.get('layer_norm_eps', 1e-5),
                mlp_act=ACTS[act])


def model_section(hf: dict, dtype: str = 'float32') -> dict:
    """The jaxbig 'two_tower' model section of a HF CLIPConfig (params, compute in `dtype`)."""
    v, t = hf.get('vision_config') or {}, hf.get('text_config') or {}
    image = square('vision_config.image_size', v.get('image_size', 224), 'CLIP')
    patch = square('vision_config.patch_size', v.get('patch_size', 32), 'CLIP')
    need('vision_config.image_size', image, image % patch == 0,
         f'not a multiple of patch_size={patch}', 'CLIP')
    vocab, eos = t.get('vocab_size', 49408), t.get('eos_token_id', 49407)
    need('text_config.eos_token_id', eos, isinstance(eos, int) and 0 <= eos < vocab,
         f'an id in the vocabulary (vocab_size={vocab})', 'CLIP')
    tower = dict(name='vit', patch_size=patch, **_tower_common(v, 'vision_config'), pool='cls',
                 num_classes=0, positions='all', patch_bias=False, pre_norm=True,
                 final_norm='pooled', pooler_dim=0, image_size=image, dtype=dtype,
                 param_dtype=dtype)
    text = dict(name='text_encoder', vocab_size=vocab,
                max_len=t.get('max_position_embeddings', 77),
                **_tower_common(t, 'text_config'), pool='argmax' if eos == 2 else 'eos',
                pad_id=-1, eos_id=eos, causal=True, dtype=dtype, param_dtype=dtype)
    return dict(name='two_tower', image=tower, text=text, embed_dim=hf.get('projection_dim', 512),
                logit_scale_init=float(hf.get('logit_scale_init_value', 2.6592)),
                use_bias=False, logit_bias_init=0.0, dtype=dtype, param_dtype=dtype)


def run_config(hf: dict, dtype: str = 'float32') -> ml_collections.ConfigDict:
    """experiments/clip.py's sections (loss=clip, data=coco_captions, a placeholder at the
    checkpoint's image size and text length) around the imported model. The model
    directory's tokenizer.json, when it has one, becomes data.tokenizer (copied into the
    workdir by the import), with data.eos_id = the id the text tower pools at."""
    c = ml_collections.ConfigDict()
    c.model = model_section(hf, dtype)
    max_len = c.model.text.max_len
    eos = c.model.text.eos_id if c.model.text.pool == 'eos' else -1  # argmax: the file's
    c.data = dict(pipeline='image_text', name='coco_captions', data_dir='', resolution=32,
                  num_train=5000, num_test=1000, shapes_seed=0, image_key='image',
                  text_key='captions/text', label_key='', tokenizer='bytes', eos_id=eos,
                  max_len=max_len, image_size=c.model.image.image_size, train_split='train',
                  val_split='val')
    c.loss = dict(name='multimodal', kind='clip', max_logit_scale=4.605170185988092)  # log 100
    c.optimizer = defaults.optimizer(lr=1e-5, warmup_steps='auto', min_lr_ratio=0.0, b2=0.98,
                                     eps=1e-6, weight_decay=1e-4)
    c.parallel = defaults.parallel()
    c.train = defaults.pretrain_train(600, 128)
    c.evals = dict(retrieval=dict(type='retrieval', every=0, split='', max_examples=1000,
                                  ks=(1, 5, 10), batch_size=0))
    return experiment.resolve_auto(c)


def example(hf: dict) -> tuple:
    import numpy as np

    v, t = hf.get('vision_config') or {}, hf.get('text_config') or {}
    side = square('vision_config.image_size', v.get('image_size', 224), 'CLIP')
    return (np.zeros((1, side, side, v.get('num_channels', 3)), np.float32),
            np.zeros((1, t.get('max_position_embeddings', 77)), np.int32))


def layout(model):
    """(image vit.Model, text text_encoder.Model) of a two-tower model, or None."""
    from jaxbig import models
    from jaxbig.models import two_tower

    if not isinstance(model, two_tower.Model):
        return None
    image, text = dict(model.image or {'name': 'vit'}), dict(model.text or {'name': 'text_encoder'})
    if image.get('name') != 'vit' or text.get('name') != 'text_encoder':
        return None
    return (models.get_model(image.pop('name'), **image),
            models.get_model(text.pop('name'), **text))


def reasons(model) -> list[str]:
    image, text = layout(model)
    bad = [f'image.{r}' for r in vision.vit_reasons(image, clip=True)]
    want = dict(use_bias=True, causal=True)
    bad += [f'text.{k}={getattr(text, k)!r}' for k, w in want.items() if getattr(text, k) != w]
    if text.pool not in ('eos', 'argmax') or (text.pool == 'eos' and text.eos_id == 2):
        bad.append(f'text.pool={text.pool!r} (eos_id={text.eos_id}; HF pools eos_id=2 as '
                   "'argmax')")
    if text.width % text.num_heads:
        bad.append(f'text.num_heads={text.num_heads} (not dividing width={text.width})')
    if model.use_bias:
        bad.append('use_bias=True (a SigLIP logit bias)')
    return bad


def tensors(model, hf_prefix=None) -> dict:
    image, text = layout(model)
    v, t, jv, jt = 'vision_model.', 'text_model.', 'image_tower/', 'text_tower/'
    out = {f'{v}embeddings.class_embedding': (f'{jv}embed/cls', lambda x: x.reshape(1, 1, -1),
                                              lambda x: x.reshape(-1)),
           f'{v}embeddings.position_embedding.weight': (f'{jv}embed/pos_embedding', *same())}
    out.update(vision.patch_tensors(jv, f'{v}embeddings.patch_embedding.weight'))
    out.update(vision.norm_tensors(f'{jv}embed_norm', f'{v}pre_layrnorm'))
    out.update(vision.encoder_tensors(f'{jv}encoder/', f'{v}encoder.layers.', CLIP_BLOCK, image))
    out.update(vision.norm_tensors(f'{jv}pool_norm', f'{v}post_layernorm'))
    out[f'{t}embeddings.token_embedding.weight'] = (f'{jt}embed/Embed_0/embedding', *same())
    out[f'{t}embeddings.position_embedding.weight'] = (f'{jt}embed/pos_embedding', *same())
    out.update(vision.encoder_tensors(f'{jt}encoder/', f'{t}encoder.layers.', CLIP_BLOCK, text))
    out.update(vision.norm_tensors(f'{jt}encoder/final_norm', f'{t}final_layer_norm'))
    out['visual_projection.weight'] = ('image_proj/kernel', *transposed())
    out['text_projection.weight'] = ('text_proj/kernel', *transposed())
    out['logit_scale'] = ('logit_scale', *same())
    return out


def hf_config(model, shapes: dict) -> dict:
    image, text = layout(model)
    if text.pool == 'argmax':
        eos = 2
    elif text.eos_id < 0:
        raise ConfigError(f'model.text.eos_id={text.eos_id}: CLIP pools at an eos token')
    else:
        eos = text.eos_id

    def tower(m, kind):
        return dict(model_type=f'clip_{kind}_model', hidden_size=m.width,
                    intermediate_size=m.mlp_dim, num_hidden_layers=m.depth,
                    num_attention_heads=m.num_heads, hidden_act=ACTS_BACK[m.mlp_act],
                    layer_norm_eps=m.norm_eps, attention_dropout=0.0,
                    projection_dim=model.embed_dim)

    vision_cfg = dict(tower(image, 'vision'), patch_size=image.patch_size,
                      image_size=vision.image_side(image, shapes, 'image_tower/'),
                      num_channels=shapes['image_tower/embed/Conv_0/kernel'][2])
    text_cfg = dict(tower(text, 'text'), vocab_size=text.vocab_size,
                    max_position_embeddings=text.max_len, eos_token_id=eos,
                    pad_token_id=text.pad_id if text.pad_id >= 0 else 1)
    return dict(architectures=['CLIPModel'], model_type='clip', projection_dim=model.embed_dim,
                logit_scale_init_value=model.logit_scale_init, text_config=text_cfg,
                vision_config=vision_cfg)
