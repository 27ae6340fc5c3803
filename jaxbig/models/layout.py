"""Layer layouts: `scan_layers` is a speed / compile switch, never a different model.

    scanned    .../layers/<param>     [depth, ...]  names ('layers', *axes)  (nn.scan)
    unrolled   .../layers_<i>/<param> [...]         names axes              (a loop)

nn.scan splits the 'params' rng into one key per layer, while an unrolled layer derives
its key from its module name, so `model.init` draws different numbers in the two layouts
for the same seed. `init_params` removes that difference: the parameters are always drawn
in the scanned layout (one layer traced, whatever the depth) and sliced into the model's
own layout, so unrolled layer i is slice i of the scanned stack and every other parameter
is the same number. A model already scanned everywhere (or without the switch) is
initialised by `model.init` alone, as before; a run that was unrolled draws new numbers
from the same distributions (those of its scanned twin). The path convention is the one
`interop.mapped.unscan` reads checkpoints with.

Which switches are turned on for the canonical draw: the model's own `scan_layers`, and
that of every sub-model config dict `{'name': ..., **fields}` it holds (the towers of
`two_tower`, the backbones of `classifier`, `simclr`, `audio`) whose model has the field;
a wrapper such as `lora.LoraModel` (a `model` attribute) is looked through.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
from flax import traverse_util

from jaxbig.config import resolve
from jaxbig.errors import ConfigError

SWITCH = 'scan_layers'
# The stacks a scanned model's params live under (a leading [layers] axis): the GPT's
# `layers` and, with model.moe.first_dense, its `dense_layers`; every other model's `layers`.
STACKS = ('layers', 'dense_layers')
_UNROLLED = re.compile(r'(.+)_(\d+)')  # `layers_3` -> the 4th layer of the stack `layers`


def init_params(model, rngs: dict, *example_inputs, **kwargs):
    """model.init(rngs, *example_inputs, **kwargs)['params'], the same numbers whatever
    model.scan_layers (boxed params kept, i.e. nn.Partitioned metadata preserved, since the
    caller may need logical axes).

    Pure jax: works under jax.jit and jax.eval_shape. The boxes (logical axis names) are
    those `model.init` gives in the model's own layout.
    """
    if scanned_form(model) is model:
        return model.init(rngs, *example_inputs, **kwargs)['params']
    # The model's own tree first (abstractly): a wrapper's one-time report (LoRA's) then
    # describes the layout that trains, and the scanned copy made next does not repeat it.
    target = jax.eval_shape(lambda: model.init(rngs, *example_inputs, **kwargs)['params'])
    drawn = scanned_form(model).init(rngs, *example_inputs, **kwargs)['params']
    return to_layout(drawn, target)


def scanned_form(model):
    """`model` with every `scan_layers` switch on (see the module docstring); `model`
    itself when none is off."""
    if isinstance(model, nn.Module):
        changes = {}
        for field in dataclasses.fields(model):
            if field.name in ('parent', 'name'):
                continue
            value = getattr(model, field.name)
            new = True if field.name == SWITCH else _scanned_value(value)
            if new is not value and new != value:  # (`is` first: arrays have no ==)
                changes[field.name] = new
        return model.clone(**changes) if changes else model
    inner = getattr(model, '__dict__', {}).get('model')
    if isinstance(inner, nn.Module):  # a wrapper around a linen model (lora.LoraModel)
        new = scanned_form(inner)
        if new is inner:
            return model
        wrapper = object.__new__(type(model))
        wrapper.__dict__.update(model.__dict__, model=new)
        return wrapper
    return model


def _scanned_value(value):
    """A field value with the switches of the sub-model configs in it turned on."""
    if isinstance(value, nn.Module):
        return scanned_form(value)
    if not isinstance(value, Mapping):
        return value
    new = {k: _scanned_value(v) for k, v in value.items()}
    if _has_switch(value.get('name')):
        new[SWITCH] = True
    return value if new == dict(value) else new


def _has_switch(name) -> bool:
    """Whether `jaxbig.models.<name>.Model` has a `scan_layers` field."""
    if not isinstance(name, str):
        return False
    try:
        model_class = resolve('jaxbig.models', name, 'model.name', 'Model').Model
    except ConfigError:  # a dict with a 'name' that is not a model config
        return False
    return SWITCH in {f.name for f in dataclasses.fields(model_class)}


def to_layout(params, target):
    """`params` (boxed, any layout) rearranged into the layout of `target` (the boxed tree
    or its `jax.eval_shape`): a path found in `params` is taken as is, `.../layers_<i>/...`
    is slice i of `params`' `.../layers/...`. Values keep target's boxes (logical axis
    names); a path with no counterpart, or a shape / dtype that differs, is an error."""
    source = traverse_util.flatten_dict(params)
    out = {}
    for path, box in traverse_util.flatten_dict(target).items():
        value = _counterpart(source, path)
        want = _raw(box)
        if value.shape != want.shape or value.dtype != want.dtype:
            raise ValueError(f"layout: param {'/'.join(path)} is {want.dtype}{list(want.shape)} "
                             f'in the model but {value.dtype}{list(value.shape)} in the '
                             'scanned init (a layer whose shape depends on its index?)')
        out[path] = box.replace_boxed(value) if isinstance(box, nn.meta.AxisMetadata) else value
    return traverse_util.unflatten_dict(out)


def _counterpart(source, path):
    """The array at `path` in `source`, or the slice of the stack that holds it."""
    if path in source:
        return _raw(source[path])
    for j, part in enumerate(path):
        match = _UNROLLED.fullmatch(part)
        stacked = path[:j] + (match.group(1),) + path[j + 1:] if match else None
        if stacked in source:
            return _raw(source[stacked])[int(match.group(2))]
    raise ValueError(f"layout: param {'/'.join(path)} has no counterpart in the scanned init "
                     '(expected the same path, or .../layers/... for .../layers_<i>/...)')


def _raw(x):
    """The array inside a box, without the sharding constraint `unbox` may add."""
    return x.value if isinstance(x, nn.Partitioned) else nn.unbox(x)
