"""Hugging Face T5 -> jaxbig's T5 (`jaxbig.models.t5`): config fields and tensor names (the
import loop is interop/mapped.py's `import_mapped`).

    T5ForConditionalGeneration  -> model.name='t5' in experiments/seq2seq.py's sections
                                   (seq2seq loss, the embedded conditional task's seq2seq
                                   pipeline); logits = HF's logits, and `t5.generate`
                                   (greedy) = HF's generate(do_sample=False)

Config: d_model -> embed_dim, d_kv -> head_dim, d_ff -> mlp_dim, num_layers,
num_decoder_layers, num_heads, relative_attention_num_buckets / _max_distance,
layer_norm_epsilon -> norm_eps, feed_forward_proj -> feed_forward ('[gated-]ACT', ACT in
jaxbig.models.t5.ACTS; the config's dense_act_fn / is_gated_act must agree with it),
decoder_start_token_id (default the pad id) -> decoder_start_id; dropout 0.
The head: untied when the checkpoint stores an `lm_head.weight` that differs from
`shared.weight` (T5 v1.1), else tied to the shared embedding; the decoder output is
rescaled by d_model**-0.5 when `scale_decoder_outputs` says so (transformers >= 5), or
else when `tie_word_embeddings` is not false (transformers 4: T5's rule).
With a tokenizer.json beside the weights the data read through it and eos_id is the
config's eos_token_id; without one the data are bytes.

Tensor names: `shared.weight`, `{encoder,decoder}.block.{i}.layer.{j}.*`, the relative
bias tables in block 0, `{encoder,decoder}.final_layer_norm.weight`, `lm_head.weight`; the
per-stack copies of the embedding (`*.embed_tokens.weight`) and the unused cross-attention
bias table HF ignores too are not read.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxbig import defaults, experiment
from jaxbig.config import ConfigError
from jaxbig.interop import mapped
from jaxbig.interop.mapped import need, same, transposed
from jaxbig.interop.tensors import TensorReader

ARCHS = ('T5ForConditionalGeneration',)
IGNORED = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
           'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')
TOKENIZER_FILE = 'tokenizer.json'


def handles(hf: dict) -> bool:
    return (hf.get('architectures') or [''])[0] in ARCHS


def _feed_forward(hf: dict) -> str:
    from jaxbig.models import t5

    proj = hf.get('feed_forward_proj', 'relu')
    try:
        gated, act = t5.feed_forward_kind(proj)
    except ValueError:
        raise ConfigError(f"config.json: feed_forward_proj={proj!r} is not representable in "
                          f"jaxbig's T5 (expected '[gated-]ACT' with ACT in "
                          f'{sorted(t5.ACTS)})') from None
    for field, want in (('is_gated_act', gated), ('dense_act_fn', act)):
        if field in hf:
            need(field, hf[field], hf[field] == want,
                 f'feed_forward_proj={proj!r} means {want!r}', 'T5')
    return proj


def model_section(hf: dict, untied: bool) -> dict:
    """The jaxbig 't5' model section of a HF T5Config (`untied`: a separate lm_head)."""
    for field, want in (('is_encoder_decoder', True), ('is_decoder', False)):
        need(field, hf.get(field, want), hf.get(field, want) == want,
             'an encoder-decoder only', 'T5')
    scale = hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True) is not False)
    layers = hf.get('num_layers', 6)
    start = hf.get('decoder_start_token_id')
    start = hf.get('pad_token_id', 0) if start is None else start
    need('decoder_start_token_id', start, isinstance(start, int) and start >= 0,
         'a token id', 'T5')
    buckets = hf.get('relative_attention_num_buckets', 32)
    distance = hf.get('relative_attention_max_distance', 128)
    need('relative_attention_max_distance', distance, distance > buckets // 4,
         f'must exceed a quarter of relative_attention_num_buckets={buckets}', 'T5')
    return dict(name='t5', vocab_size=hf.get('vocab_size', 32128), num_layers=layers,
                num_decoder_layers=hf.get('num_decoder_layers') or layers,
                num_heads=hf.get('num_heads', 8), embed_dim=hf.get('d_model', 512),
                head_dim=hf.get('d_kv', 64), mlp_dim=hf.get('d_ff', 2048),
                feed_forward=_feed_forward(hf), relative_buckets=buckets,
                relative_max_distance=distance, dropout=0.0,
                norm_eps=hf.get('layer_norm_epsilon', 1e-6), tie_embeddings=not untied,
                rescale_head=bool(scale), decoder_start_id=int(start),
                scan_layers=layers > 6, dtype='float32', param_dtype='float32')


def run_config(hf: dict, untied: bool, directory: str) -> ml_collections.ConfigDict:
    """experiments/seq2seq.py's sections around the imported model."""
    from jaxbig.data.pipelines import seq2seq

    c = ml_collections.ConfigDict()
    c.model = model_section(hf, untied)
    has_tokenizer = os.path.isfile(os.path.join(directory, TOKENIZER_FILE))
    eos = hf.get('eos_token_id', 1)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    c.data = seq2seq.section('name', 256, 64, decoder_start_id=c.model.decoder_start_id)
    if has_tokenizer and eos is not None:
        c.data.eos_id = int(eos)
    c.loss = dict(name='seq2seq', z_loss=0.0)
    c.optimizer = defaults.lm_optimizer(lr=1e-3)
    c.init_from = defaults.init_from()
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=300, batch_size=32)
    c.evals = dict(val=dict(type='loss', split='validation', num_examples=0, batch_size=0),
                   gen=dict(type='generation', split='validation', num_examples=128,
                            batch_size=0, max_new_tokens=0))
    c.lora = dict(targets=[], rank=8, alpha=16.0)
    return experiment.resolve_auto(c)


def _heads(h: int, d: int):
    """(to_jaxbig, to_hf) of q / k / v: [h*d, E] <-> kernel [E, h, d]."""
    return (lambda w: np.ascontiguousarray(w.T.reshape(w.shape[1], h, d)),
            lambda k: np.ascontiguousarray(k.reshape(k.shape[0], h * d).T))


def _out(h: int, d: int):
    """(to_jaxbig, to_hf) of o: [E, h*d] <-> kernel [h, d, E]."""
    return (lambda w: np.ascontiguousarray(w.T.reshape(h, d, w.shape[0])),
            lambda k: np.ascontiguousarray(k.reshape(h * d, k.shape[-1]).T))


def _attention(hf_prefix: str, jb_prefix: str, h: int, d: int) -> dict:
    out = {f'{hf_prefix}.{n}.weight': (f'{jb_prefix}/{j}/kernel', *_heads(h, d))
           for n, j in (('q', 'query'), ('k', 'key'), ('v', 'value'))}
    out[f'{hf_prefix}.o.weight'] = (f'{jb_prefix}/out/kernel', *_out(h, d))
    return out


def tensors(model) -> dict:
    """{hf name: (canonical jaxbig path, to_jaxbig, to_hf)} (interop/mapped.py's format)."""
    from jaxbig.models import t5

    h, d = model.num_heads, model.resolved_head_dim
    gated, _ = t5.feed_forward_kind(model.feed_forward)
    ffn = ('wi_0', 'wi_1', 'wo') if gated else ('wi', 'wo')
    out = {'shared.weight': ('shared/embedding', *same())}
    for stack, n in (('encoder', model.num_layers), ('decoder', model.resolved_decoder_layers)):
        out[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
            f'{stack}/relative_bias/embedding', *same())
        out[f'{stack}.final_layer_norm.weight'] = (f'{stack}/final_norm/scale', *same())
        sublayers = [('SelfAttention', 'attn', 'attn_norm')]
        if stack == 'decoder':
            sublayers.append(('EncDecAttention', 'cross_attn', 'cross_norm'))
        for i in range(n):
            hf, jb = f'{stack}.block.{i}.layer', f'{stack}/layers_{i}'
            for j, (name, attn, norm) in enumerate(sublayers):
                out.update(_attention(f'{hf}.{j}.{name}', f'{jb}/{attn}', h, d))
                out[f'{hf}.{j}.layer_norm.weight'] = (f'{jb}/{norm}/scale', *same())
            j = len(sublayers)
            for w in ffn:
                out[f'{hf}.{j}.DenseReluDense.{w}.weight'] = (f'{jb}/mlp/{w}/kernel',
                                                              *transposed())
            out[f'{hf}.{j}.layer_norm.weight'] = (f'{jb}/mlp_norm/scale', *same())
    if not model.tie_embeddings:
        out['lm_head.weight'] = ('lm_head/kernel', *transposed())
    return out


def import_dir(directory: str, workdir: str, hf: dict, *, param_dtype: str = '') -> dict:
    """`hf.import_dir` for T5ForConditionalGeneration (see the module docstring)."""
    if param_dtype not in ('', 'float32'):
        raise ConfigError(f'--param-dtype {param_dtype}: T5 imports keep float32 params')
    reader = TensorReader(directory)
    names = set(reader.names())
    untied = 'lm_head.weight' in names and not (
        'shared.weight' in names
        and np.array_equal(reader.get('lm_head.weight'), reader.get('shared.weight')))
    config = run_config(hf, untied, directory)
    example = (np.zeros((1, 8), np.int32), np.ones((1, 8), np.int32),
               np.zeros((1, 4), np.int32), np.ones((1, 4), np.float32))
    ignored = IGNORED + (() if untied else ('lm_head.weight',))
    return mapped.import_mapped(directory, workdir, reader, config, example,
                                lambda model: ('t5', tensors(model)), ignored=ignored,
                                tokenizer=os.path.join(directory, TOKENIZER_FILE))
