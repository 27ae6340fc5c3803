"""The name-mapped import / export loops shared by the encoder families (ViT, CLIP, BERT;
interop/vision.py, interop/clip.py, interop/bert.py), and the small helpers their tensor
maps are written with.

A family describes itself as a tensor map {hf name: (canonical jaxbig path, to_jaxbig,
to_hf)}: one HF tensor per jaxbig array, every layer spelt out. Canonical paths name layers
`.../layers_3/...`; a scanned model stores them stacked as `.../layers/...`[3], which
`unscan` converts. `import_mapped` reads a checkpoint through such a map into a workdir;
`export_mapped` writes a run's params back through it.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxbig.config import ConfigError
from jaxbig.interop.tensors import write_model_dir, write_workdir

ACTS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
        'gelu_fast': 'gelu', 'quick_gelu': 'quick_gelu'}
ACTS_BACK = {'gelu_exact': 'gelu', 'gelu': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu'}
IGNORED = ('.position_ids',)  # buffers older checkpoints store


def _c(x):
    return np.ascontiguousarray(x)


def same():
    return (lambda x: x), (lambda x: x)


def transposed():
    return (lambda w: _c(w.T)), (lambda k: _c(k.T))


def need(field: str, value, ok: bool, why: str, what: str = 'ViT'):
    if not ok:
        raise ConfigError(f'config.json: {field}={value!r} is not representable in '
                          f"jaxbig's {what} ({why})")


def square(field: str, value, what: str = 'ViT') -> int:
    if isinstance(value, (list, tuple)):
        need(field, value, len(value) == 2 and value[0] == value[1], 'square only', what)
        value = value[0]
    return int(value)


def unscan(path: str, shape: tuple) -> list[tuple[str, tuple, int | None]]:
    """An actual param path -> [(canonical path, shape, layer index or None)]: a scanned
    `.../layers/...` [depth, ...] is depth canonical `.../layers_i/...` arrays."""
    parts = path.split('/')
    if 'layers' not in parts:
        return [(path, tuple(shape), None)]
    j = parts.index('layers')
    return [('/'.join(parts[:j] + [f'layers_{i}'] + parts[j + 1:]), tuple(shape[1:]), i)
            for i in range(shape[0])]


def import_mapped(directory: str, workdir: str, reader, config, example: tuple, specs_of, *,
                  ignored: tuple = IGNORED, tokenizer: str = '') -> dict:
    """The import loop of the name-mapped encoder families (ViT, CLIP, BERT): builds
    `config`'s model (initialised on `example` inputs, abstractly), reads every HF tensor
    its name map `specs_of(model) -> (family name, {hf name: (canonical path, to_jaxbig,
    to_hf)})` names (checking shapes; a tensor missing, or one left over that does not end
    with `ignored`, is an error), stacks scanned layers and writes the workdir (with
    `tokenizer`, a tokenizer.json path, when it exists). Params take the dtypes of the
    model's own (its param_dtype: a bfloat16 checkpoint's values stay exact)."""
    import flax.linen as nn

    from jaxbig import models, parallel
    from jaxbig.finetune import flatten, unflatten

    names = set(reader.names())
    model = models.from_config(config)
    mesh = parallel.make_mesh(config.parallel)
    rules = parallel.rules_from_config(config.parallel)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example)['params'])
        abstract = jax.tree.map(lambda x: getattr(x, 'value', x), boxed,
                                is_leaf=lambda x: isinstance(x, nn.Partitioned))
        logical = parallel.fit_specs(nn.get_partition_spec(boxed), abstract, mesh, rules)
        shardings = parallel.logical_to_shardings(logical, mesh, rules)
    flat, flat_shardings = flatten(abstract), flatten(shardings)
    name, specs = specs_of(model)
    by_path = {path: (hf_name, to_jaxbig, to_hf)
               for hf_name, (path, to_jaxbig, to_hf) in specs.items()}
    canonical = {c: (path, shape, i) for path, leaf in flat.items()
                 for c, shape, i in unscan(path, leaf.shape)}
    assert set(canonical) == set(by_path), sorted(set(canonical) ^ set(by_path))[:4]
    missing = sorted(n for n in specs if n not in reader)
    if missing:
        raise ConfigError(f'{directory}: tensors missing for {name}: {", ".join(missing[:6])}')
    left = [n for n in sorted(names - set(specs)) if not n.endswith(ignored)]
    if left:
        raise ConfigError(f'{directory}: tensors left over after mapping to {name}: '
                          f'{", ".join(left[:6])}{" ..." if len(left) > 6 else ""}')

    def one(c: str):
        hf_name, to_jaxbig, to_hf = by_path[c]
        tensor = reader.get(hf_name)
        want = np.shape(to_hf(np.zeros(canonical[c][1], np.float32)))
        if tensor.shape != want:
            raise ConfigError(f'{directory}: tensor {hf_name} has shape {tuple(tensor.shape)}, '
                              f'expected {tuple(want)} for this config')
        return np.asarray(to_jaxbig(tensor), np.float32)

    params = {}
    for path, leaf in flat.items():
        parts = unscan(path, leaf.shape)
        value = one(parts[0][0]) if parts[0][2] is None else np.stack([one(c) for c, *_ in parts])
        params[path] = jax.device_put(value.astype(leaf.dtype), flat_shardings[path])
    write_workdir(workdir, config, unflatten(params), tokenizer)
    return dict(family=name, dtype=str(next(iter(flat.values())).dtype),
                num_params=sum(int(np.prod(x.shape)) for x in flat.values()))


def export_mapped(run, model, out: str, name: str, tensors, hf_config) -> dict:
    """Writes `run`'s params (LoRA merged) through the family's map `tensors(model)` as a
    Hugging Face directory whose config.json is `hf_config(model, canonical shapes)`."""
    from jaxbig import lora
    from jaxbig.finetune import flatten

    params = run.params
    if lora.KEY in params:
        cfg = run.config.lora
        params = jax.device_get(lora.merge(jax.tree.map(np.asarray, params),
                                           cfg.alpha / cfg.rank))
    canonical = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        for c, _, i in unscan(path, value.shape):
            canonical[c] = value if i is None else value[i]
    specs = tensors(model)
    unmapped = sorted(set(canonical) - {path for path, _, _ in specs.values()})
    if unmapped:
        raise ConfigError(f'params not in the {name} name map: {", ".join(unmapped[:6])}')
    written = {hf_name: to_hf(canonical[path]) for hf_name, (path, _, to_hf) in specs.items()}
    hf = hf_config(model, {c: v.shape for c, v in canonical.items()})
    dtype = write_model_dir(out, written, hf)
    return dict(family=hf['architectures'][0], step=run.step, tensors=len(written),
                dtype=dtype)
