"""Hugging Face BERT -> jaxbig's BERT (`jaxbig.models.bert`): config fields and tensor names
(the import loop is interop/mapped.py's `import_mapped`).

    BertModel                       -> model.name='bert', head='none', pool='cls', pooler
                                       when the checkpoint has one (features = HF's
                                       pooler_output; `Model.hidden` = last_hidden_state)
    BertForMaskedLM                 -> model.name='bert', head='mlm' (logits = HF's logits;
                                       the decoder tied to the word embeddings)
    BertForSequenceClassification   -> model.name='classifier' on a 'bert' backbone (pooler,
                                       pool='cls'; `encoder/...` + `head/...`, as
                                       experiments/finetune_text.py builds it)

Every import is post-norm with learned absolute positions (position_embedding_type
'absolute'), biases, no class token (the tokenizer's [CLS] is in the ids), dropout 0.
The run's sections are experiments/mlm.py's (masked_lm loss, packed text data) for BertModel
and BertForMaskedLM, experiments/finetune_text.py's (classification on the embedded
snippet task, a placeholder: point data at your task) for the classifier. With a
tokenizer.json beside the weights the data read through it and loss.mask_id is its [MASK];
without one the data are bytes and loss.mask_id=-1 (set it before training an MLM).
Tensor names: `{prefix}embeddings.*`, `{prefix}encoder.layer.{i}.*`, `{prefix}pooler.*`
(prefix 'bert.' in the task models), `cls.predictions.*`, `classifier.*`; the tied
decoder weight and the position_ids buffer, when stored, are not read.
"""

from __future__ import annotations

import os
import re

import ml_collections

from jaxbig import defaults
from jaxbig import experiment
from jaxbig.config import ConfigError
from jaxbig.interop import mapped, vision
from jaxbig.interop.mapped import ACTS, need, same, transposed
from jaxbig.interop.tensors import TensorReader

ARCHS = ('BertModel', 'BertForMaskedLM', 'BertForSequenceClassification')
BERT_BLOCK = dict(query='attention.self.query', key='attention.self.key',
                  value='attention.self.value', out='attention.output.dense',
                  mlp_in='intermediate.dense', mlp_out='output.dense',
                  attn_norm='attention.output.LayerNorm', mlp_norm='output.LayerNorm')
IGNORED = ('.position_ids', '.token_type_ids', 'cls.predictions.decoder.weight',
           'cls.predictions.decoder.bias', 'cls.seq_relationship.weight',
           'cls.seq_relationship.bias')
TOKENIZER_FILE = 'tokenizer.json'


def handles(hf: dict) -> bool:
    return (hf.get('architectures') or [''])[0] in ARCHS


def model_section(hf: dict, *, pooler: bool, head: str) -> dict:
    """The jaxbig 'bert' model section of a HF BertConfig."""
    act = hf.get('hidden_act', 'gelu')
    need('hidden_act', act, act in ACTS, f'expected one of {sorted(ACTS)}', 'BERT')
    kind = hf.get('position_embedding_type', 'absolute')
    need('position_embedding_type', kind, kind == 'absolute', "expected 'absolute'", 'BERT')
    need('is_decoder', hf.get('is_decoder', False), not hf.get('is_decoder', False),
         'a bidirectional encoder only', 'BERT')
    tied = hf.get('tie_word_embeddings', True)
    need('tie_word_embeddings', tied, tied or head != 'mlm', 'the MLM decoder is tied', 'BERT')
    width, heads = hf.get('hidden_size', 768), hf.get('num_attention_heads', 12)
    need('num_attention_heads', heads, width % heads == 0, f'not dividing hidden_size={width}',
         'BERT')
    depth = hf.get('num_hidden_layers', 12)
    return dict(name='bert', vocab_size=hf.get('vocab_size', 30522),
                max_len=hf.get('max_position_embeddings', 512),
                type_vocab_size=hf.get('type_vocab_size', 2), width=width, depth=depth,
                num_heads=heads, mlp_dim=hf.get('intermediate_size', 3072), dropout=0.0,
                scan_layers=depth > 6, norm='post', positions='learned', rope_base=10000.0,
                use_bias=True, norm_eps=hf.get('layer_norm_eps', 1e-12), mlp_act=ACTS[act],
                class_token=False, pool='cls', pooler=pooler, head=head)


def mask_id(directory: str) -> int:
    """The [MASK] id of the tokenizer.json beside the weights; -1 without one."""
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return -1
    import tokenizers

    found = tokenizers.Tokenizer.from_file(path).token_to_id('[MASK]')
    return -1 if found is None else int(found)


def run_config(hf: dict, names: set, directory: str) -> ml_collections.ConfigDict:
    from jaxbig.losses import masked_lm

    arch = hf['architectures'][0]
    prefix = 'bert.' if arch != 'BertModel' else ''
    pooler = f'{prefix}pooler.dense.weight' in names
    c = ml_collections.ConfigDict()
    if arch == 'BertForSequenceClassification':
        labels = len(hf.get('id2label') or {}) or hf.get('num_labels', 2)
        need('num_labels', labels, labels > 0, 'expected a classifier head', 'BERT')
        c.model = dict(name='classifier', backbone=model_section(hf, pooler=True, head='none'),
                       num_classes=labels, pooling='mean')
        c.data = dict(tokenizer='bytes', eos_id=-1, pipeline='text_classes', name='pystdlib',
                      data_dir='', seq_len=min(128, c.model.backbone.max_len), min_files=2,
                      train_split='train', val_split='validation', folds=defaults.folds())
        c.loss = dict(name='classification', kind='softmax', label_smoothing=0.0)
        c.optimizer = defaults.optimizer(lr=2e-5, warmup_steps='auto', weight_decay=0.01)
        c.init_from = defaults.init_from()
        c.train = defaults.finetune_train(300, 32)
        c.evals = dict(val=dict(type='classification', split='validation', num_examples=1024,
                                batch_size=64))
    else:
        c.model = model_section(hf, pooler=pooler,
                                head='mlm' if arch == 'BertForMaskedLM' else 'none')
        c.data = defaults.lm_data(seq_len=min(128, c.model.max_len))
        c.loss = masked_lm.section(mask_id=mask_id(directory), random_ids=c.model.vocab_size)
        c.optimizer = defaults.lm_optimizer(lr=1e-4, b2=0.98, weight_decay=0.01)
        c.init_from = defaults.init_from()
        c.train = defaults.train(steps=600, batch_size=32)
        c.evals = defaults.lm_evals()
    c.parallel = defaults.parallel()
    c.lora = dict(targets=[], rank=8, alpha=16.0)
    return experiment.resolve_auto(c)


def layout(model):
    """(bert.Model, jaxbig prefix, head path or '') of a jaxbig bert / classifier on a bert."""
    from jaxbig import models
    from jaxbig.models import bert, classifier

    if isinstance(model, bert.Model):
        return model, '', ''
    if isinstance(model, classifier.Model) and dict(model.backbone).get('name') == 'bert':
        kwargs = dict(model.backbone)
        return models.get_model(kwargs.pop('name'), **kwargs), 'encoder/', 'head'
    return None


def tensors(model, prefix: str) -> dict:
    """{hf name: (canonical jaxbig path, to_jaxbig, to_hf)} (interop/mapped.py's map format)."""
    m, jb, head = layout(model)
    p = prefix
    out = {f'{p}embeddings.word_embeddings.weight': (f'{jb}embed/word/embedding', *same())}
    if m.positions == 'learned':
        out[f'{p}embeddings.position_embeddings.weight'] = (f'{jb}embed/pos_embedding', *same())
    if m.type_vocab_size:
        out[f'{p}embeddings.token_type_embeddings.weight'] = (f'{jb}embed/type_embedding',
                                                              *same())
    out.update(vision.norm_tensors(f'{jb}embed_norm', f'{p}embeddings.LayerNorm'))
    layers = vision.encoder_tensors(f'{jb}encoder/', f'{p}encoder.layer.', BERT_BLOCK, m)
    for name, (path, *convert) in layers.items():  # jaxbig keeps q/k/v/out under attn/
        out[name] = (re.sub(r'/(query|key|value|out)/', r'/attn/\1/', path), *convert)
    if m.pooler:
        out[f'{p}pooler.dense.weight'] = (f'{jb}pooler_dense/kernel', *transposed())
        out[f'{p}pooler.dense.bias'] = (f'{jb}pooler_dense/bias', *same())
    if m.head == 'mlm':
        t = 'cls.predictions.'
        out[f'{t}transform.dense.weight'] = (f'{jb}mlm_dense/kernel', *transposed())
        out[f'{t}transform.dense.bias'] = (f'{jb}mlm_dense/bias', *same())
        out.update(vision.norm_tensors(f'{jb}mlm_norm', f'{t}transform.LayerNorm'))
        out[f'{t}bias'] = (f'{jb}mlm_bias', *same())
    if head:
        out['classifier.weight'] = (f'{head}/kernel', *transposed())
        out['classifier.bias'] = (f'{head}/bias', *same())
    return out


def import_dir(directory: str, workdir: str, hf: dict, *, param_dtype: str = '') -> dict:
    """`hf.import_dir` for BERT (see the module docstring)."""
    import numpy as np

    if param_dtype not in ('', 'float32'):
        raise ConfigError(f'--param-dtype {param_dtype}: BERT imports keep float32 params')
    reader = TensorReader(directory)
    names = set(reader.names())
    config = run_config(hf, names, directory)
    prefix = 'bert.' if hf['architectures'][0] != 'BertModel' else ''
    example = (np.zeros((1, 8), np.int32),)
    return mapped.import_mapped(directory, workdir, reader, config, example,
                                lambda model: ('bert', tensors(model, prefix)),
                                ignored=IGNORED,
                                tokenizer=os.path.join(directory, TOKENIZER_FILE))
