"""Hugging Face model directories in and out: `jaxbig import` and `jaxbig export`.

    import_dir(hf_dir, workdir)   config.json + safetensors (+ tokenizer.json) -> an ordinary
                                  jaxbig workdir: config.json of the matching jaxbig GPT in
                                  the LM experiment's sections, a params checkpoint at step
                                  0, the tokenizer; every command that reads a run back
                                  (generate, eval, init_from, lora, quantize, distillation
                                  teacher) works on it unchanged. Not resumable (no
                                  optimizer state): train from it with init_from.
    export_run(workdir, out)      a run's params (LoRA adapters merged) -> a directory that
                                  transformers' from_pretrained loads (config.json,
                                  model.safetensors, tokenizer.json when the run has one)

Decoders (GPT-2, Llama, Mistral, Qwen2 / 3, Gemma 1-3, OLMo 2, GPT-NeoX, Phi-3, and the
Mixture-of-Experts Mixtral, Qwen3-MoE and OLMoE: the families of interop/decoders.py) are handled
here (a per-expert tensor name, '{j}', fills one slice of a stacked expert kernel); ViTModel,
ViTForImageClassification and CLIPModel go to interop/encoders.py (vision.py, clip.py),
BertModel, BertForMaskedLM and BertForSequenceClassification to interop/bert.py,
T5ForConditionalGeneration to interop/t5.py (import only), which build their own
experiment sections and reuse `tensors.write_workdir`.

Tensors are read one at a time and placed straight into their sharding (a scanned model's
per-layer tensors are stacked into one array first); bfloat16 / float16 checkpoints keep
their dtype unless `param_dtype` says otherwise. Every problem is one ConfigError line, and
nothing is written to the workdir unless the whole import succeeded.
"""

from __future__ import annotations

import logging
import os
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxbig import defaults
from jaxbig import experiment
from jaxbig.config import ConfigError
from jaxbig.interop import decoders
from jaxbig.interop.tensors import (TOKENIZER_FILE, TensorReader, first_line, read_json,
                                    write_model_dir, write_workdir)

_DTYPES = {'F32': 'float32', 'BF16': 'bfloat16', 'F16': 'float16'}


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, 'config.json')
    if not os.path.isfile(path):
        raise ConfigError(f'{directory}: no config.json (not a Hugging Face model directory)')
    return read_json(path)


def check_tokenizer_files(directory: str):
    """Parses tokenizer_config.json (when present) and tokenizer.json (when present: loaded
    with `tokenizers` and run on a sample, encode then decode), so that a corrupt file fails
    the import in one line instead of the first `jaxbig generate` after it."""
    from jaxbig.data.text import tokenizers

    config_path = os.path.join(directory, 'tokenizer_config.json')
    if os.path.isfile(config_path):
        read_json(config_path)
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return
    try:
        tokenizer = tokenizers.from_config({'tokenizer': path, 'eos_id': -1})
        ids = tokenizer.encode('def f(x):\n    return x  # ok, Ünïcode 123\n')
        tokenizer.decode(ids)
    except Exception as e:  # noqa: BLE001 (any parse failure of the file is the user's input)
        raise ConfigError(f'{path}: not a usable tokenizer.json ({first_line(e)})') from None


def run_config(model: dict, tokenizer: str = 'bytes', eos_id: int = -1
               ) -> ml_collections.ConfigDict:
    """The LM experiment's sections (experiments/lm.py) around an imported model."""
    c = ml_collections.ConfigDict()
    c.model = defaults.gpt({}, **model, attention='einsum', attention_blocks=0)
    c.data = defaults.lm_data(seq_len=min(128, model.get('max_len') or 128))
    c.data.tokenizer, c.data.eos_id = tokenizer, eos_id
    c.loss = defaults.lm_loss()
    c.optimizer = defaults.lm_optimizer()
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=600, batch_size=32)
    c.evals = defaults.lm_evals()
    c.lora = dict(targets=[], rank=8, alpha=16.0)
    return experiment.resolve_auto(c)


def _layer_paths(path: str, first_dense: int = 0) -> tuple[str, int | None, int] | None:
    """A param path -> (its path within a layer, its HF layer index or None when scanned,
    the HF index of its stack's first layer); a global path -> None. The stacks: a MoE
    GPT's `dense_layers` (HF layers 0 .. first_dense - 1), then `layers`:
    'layers/attn/query/kernel' -> ('attn/query/kernel', None, first_dense);
    'layers_3/attn/...' -> ('attn/...', first_dense + 3, first_dense)."""
    for stack, first in (('dense_layers', 0), ('layers', first_dense)):
        if path.startswith(stack + '/'):
            return path[len(stack) + 1:], None, first
        hit = re.match(rf'{stack}_(\d+)/(.*)', path)
        if hit:
            return hit[2], first + int(hit[1]), first
    return None


def _first_dense(model) -> int:
    return model.moe_spec.first_dense if getattr(model, 'moe_spec', None) else 0


def _by_path(specs: dict) -> dict[str, tuple[str, int, object]]:
    """{jaxbig path: (hf template, index among the template's outputs, to_jaxbig)}."""
    out = {}
    for template, (paths, to_jaxbig, _) in specs.items():
        for j, path in enumerate(paths):
            out[path] = (template, j, to_jaxbig)
    return out


def _expected_shapes(specs: dict, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """{hf template: the shape it must have}, from to_hf applied to zeros of jaxbig shapes
    (a per-expert template, '{j}', gets one expert's slice of its stacked array)."""
    def zeros(t, p):
        return np.zeros(shapes[p][1:] if '{j}' in t else shapes[p], np.float32)

    return {t: np.shape(to_hf(*(zeros(t, p) for p in paths)))
            for t, (paths, _, to_hf) in specs.items()}


def _decoder_family(hf: dict):
    """decoders.family_of, naming the encoder architectures too when none matches."""
    from jaxbig.interop import bert, encoders, t5

    arch = (hf.get('architectures') or [''])[0]
    if not any(arch in f.architectures for f in decoders.FAMILIES):
        supported = [a for f in decoders.FAMILIES for a in f.architectures]
        supported += [*encoders.architectures(), *bert.ARCHS, *t5.ARCHS]
        raise ConfigError(f'config.json: architecture {arch!r} is not supported (supported: '
                          f'{", ".join(supported)})')
    return decoders.family_of(hf)


def import_dir(directory: str, workdir: str, *, param_dtype: str = '') -> dict:
    """Imports the Hugging Face model in `directory` into a new jaxbig `workdir`."""
    from jaxbig import models, parallel

    if os.path.exists(os.path.join(workdir, 'config.json')):
        raise ConfigError(f'--workdir {workdir}: already holds a run; import into a new one')
    hf = read_hf_config(directory)
    check_tokenizer_files(directory)
    from jaxbig.interop import encoders

    if encoders.handles(hf):  # ViT, ViT classifier, CLIP: interop/vision.py
        return encoders.import_dir(directory, workdir, hf, param_dtype=param_dtype)
    from jaxbig.interop import bert

    if bert.handles(hf):  # BertModel, BertForMaskedLM, BertForSequenceClassification
        return bert.import_dir(directory, workdir, hf, param_dtype=param_dtype)
    from jaxbig.interop import t5

    if t5.handles(hf):  # T5ForConditionalGeneration
        return t5.import_dir(directory, workdir, hf, param_dtype=param_dtype)
    family = _decoder_family(hf)
    model_cfg = family.model_config(hf)
    reader = TensorReader(directory)
    first = reader.names()[0]
    stored = _DTYPES.get(reader.dtype(first), 'float32')
    dtype = param_dtype or stored
    model_cfg.update(dtype=dtype, param_dtype=dtype)
    tokenizer = os.path.join(directory, TOKENIZER_FILE)
    eos = hf.get('eos_token_id')
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if eos is not None and not 0 <= int(eos) < model_cfg['vocab_size']:  # as tiny test
        # models carry (transformers only warns); kept, it would index past the embedding
        logging.warning('%s/config.json: eos_token_id=%s is outside the vocabulary '
                        '(vocab_size=%d); using the tokenizer\'s own end-of-sequence token',
                        directory, eos, model_cfg['vocab_size'])
        eos = None
    config = run_config(model_cfg, 'bytes', -1 if eos is None else int(eos))
    model = models.from_config(config)
    mesh = parallel.make_mesh(config.parallel)
    rules = parallel.rules_from_config(config.parallel)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                  np.zeros((1, 8), np.int32))['params'])
        abstract = jax.tree.map(lambda x: getattr(x, 'value', x), boxed,
                                is_leaf=lambda x: isinstance(x, nn.Partitioned))
        logical = parallel.fit_specs(nn.get_partition_spec(boxed), abstract, mesh, rules)
        shardings = parallel.logical_to_shardings(logical, mesh, rules)
    from jaxbig.finetune import flatten, unflatten

    flat, flat_shardings = flatten(abstract), flatten(shardings)
    specs = family.tensors(model)
    by_path = _by_path(specs)
    layer_shapes, first_dense = {}, _first_dense(model)
    for path, leaf in flat.items():
        where = _layer_paths(path, first_dense)
        shape = leaf.shape[1:] if where and where[1] is None else leaf.shape
        layer_shapes[where[0] if where else path] = shape
    expected = _expected_shapes(specs, layer_shapes)
    missing, params = [], {}

    experts = model.moe_spec.experts if model.moe_spec else 0

    def hf_tensor(template: str, i: int | None, j: int | None = None):
        name = template.format(i=i, j=j)
        if name not in reader:
            missing.append(name)
            return None
        tensor = reader.get(name)
        if tensor.shape != expected[template]:
            raise ConfigError(f'{directory}: tensor {name} has shape {tuple(tensor.shape)}, '
                              f'expected {tuple(expected[template])} for this config')
        return tensor

    def one(path: str, i: int | None):
        template, k, to_jaxbig = by_path[path]
        if '{j}' in template:  # one tensor per expert, stacked on the 'expert' axis
            parts = [hf_tensor(template, i, j) for j in range(experts)]
            return None if any(p is None for p in parts) else np.stack(
                [to_jaxbig(p)[k] for p in parts])
        tensor = hf_tensor(template, i)
        return None if tensor is None else to_jaxbig(tensor)[k]

    for path, leaf in flat.items():
        where = _layer_paths(path, first_dense)
        if where is None:
            value = one(path, None)
        elif where[1] is None:  # scanned: stack the stack's layers on the leading axis
            layers = [one(where[0], where[2] + i) for i in range(leaf.shape[0])]
            value = None if any(x is None for x in layers) else np.stack(layers)
        else:
            value = one(where[0], where[1])
        if value is not None:
            params[path] = jax.device_put(np.asarray(value).astype(leaf.dtype),
                                          flat_shardings[path])
    if missing:
        raise ConfigError(f'{directory}: tensors missing for {family.name}: '
                          f'{", ".join(sorted(set(missing))[:6])}')
    left = [n for n in reader.unread() if not n.endswith(family.ignored)]
    if model.tie_embeddings and 'lm_head.weight' in left:  # a tied head stored anyway
        left.remove('lm_head.weight')
    if left:
        raise ConfigError(f'{directory}: tensors left over after mapping to {family.name}: '
                          f'{", ".join(left[:6])}{" ..." if len(left) > 6 else ""}')
    write_workdir(workdir, config, unflatten(params), tokenizer)
    return dict(family=family.name, dtype=dtype, num_params=sum(
        int(np.prod(x.shape)) for x in flat.values()))


def export_run(workdir: str, out: str, step: int | None = None, *, as_family: str = '') -> dict:
    """Writes the run's params as a Hugging Face model directory `out`."""
    from jaxbig import lora
    from jaxbig import run as run_lib
    from jaxbig.finetune import flatten

    run = run_lib.load_run(workdir, step)
    model = lora.unwrap(run.model)
    from jaxbig.interop import encoders

    if encoders.handles_model(model):  # vit, classifier on a vit, two_tower: interop/vision.py
        return encoders.export_run(run, model, out, as_family=as_family)
    if type(model).__module__ != 'jaxbig.models.gpt':
        raise ConfigError(f'{workdir}: model.name={run.config.model.name!r}; export knows '
                          "jaxbig's GPT (model.name='gpt'), ViT ('vit', 'classifier' on a "
                          "'vit' backbone) and CLIP ('two_tower' of 'vit' and 'text_encoder')")
    family = decoders.family_for(model, as_family)
    params = run.params
    if lora.KEY in params:
        cfg = run.config.lora
        params = jax.device_get(lora.merge(jax.tree.map(np.asarray, params),
                                           cfg.alpha / cfg.rank))
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    first_dense = _first_dense(model)
    per_layer = {}  # HF layer index -> {path within the layer: array}
    for path, value in flat.items():
        where = _layer_paths(path, first_dense)
        if where is not None:
            rel, i, first = where
            for k, v in ([(i, value)] if i is not None else enumerate(value, first)):
                per_layer.setdefault(k, {})[rel] = v

    def layers(paths):  # the HF layers that hold `paths` (a dense layer has no router)
        return [i for i in range(model.num_layers) if all(p in per_layer[i] for p in paths)]

    tensors = {}
    experts = range(model.moe_spec.experts if model.moe_spec else 0)
    for template, (paths, _, to_hf) in family.tensors(model).items():
        if '{j}' in template:  # per expert: slice j of the stacked kernels
            for i in layers(paths):
                for j in experts:
                    tensors[template.format(i=i, j=j)] = to_hf(
                        *(per_layer[i][p][j] for p in paths))
        elif '{i}' in template:
            for i in layers(paths):
                tensors[template.format(i=i)] = to_hf(*(per_layer[i][p] for p in paths))
        else:
            tensors[template] = to_hf(*(flat[p] for p in paths))
    dtype = write_model_dir(out, tensors, family.hf_config(model),
                            run.config.data.get('tokenizer', 'bytes'))
    return dict(family=family.name, step=run.step, tensors=len(tensors), dtype=dtype)
