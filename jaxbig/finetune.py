"""Start a run from another run's parameters: `config.init_from`.

    init_from = dict(
        path='runs/lm',        # a workdir or its checkpoints/ directory ('' = off)
        step=-1,               # -1 = latest complete checkpoint
        rename=[('^', 'encoder/')],   # regex substitutions on source parameter paths
        include=['encoder/.*'],       # regexes on (renamed) paths to load; [] = all
        exclude=['.*head/.*'],        # regexes on (renamed) paths to skip
    )

Paths are '/'-joined parameter names (`encoder/layers/attn/query/kernel`). A target
parameter is loaded when some renamed source path equals it and it passes include/exclude;
all others keep their fresh initialisation (the new head). A shape mismatch names the path
and both shapes; loading nothing at all is an error.
"""

from __future__ import annotations

import logging
import re

import flax
import jax
import numpy as np

from jaxbig import checkpoint
from jaxbig.config import ConfigError


def flatten(params) -> dict[str, object]:
    return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def unflatten(flat: dict[str, object]):
    return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def merge_pretrained(target, source, *, rename=(), include=(), exclude=()):
    """Returns (target with matching source leaves copied in, list of loaded paths)."""
    renamed = {}
    for path, value in flatten(source).items():
        for pattern, replacement in rename:
            path = re.sub(pattern, replacement, path)
        renamed[path] = value
    flat, loaded = flatten(target), []
    for path, old in flat.items():
        if path not in renamed:
            continue
        if include and not any(re.fullmatch(p, path) for p in include):
            continue
        if any(re.fullmatch(p, path) for p in exclude):
            continue
        new = renamed[path]
        if tuple(new.shape) != tuple(old.shape):
            raise ConfigError(
                f'init_from: parameter {path} has shape {tuple(new.shape)} in the '
                f'checkpoint but {tuple(old.shape)} in this model'
            )
        flat[path] = np.asarray(new).astype(old.dtype)
        loaded.append(path)
    if not loaded:
        sample = ', '.join(sorted(renamed)[:3])
        raise ConfigError(
            f'init_from: no parameter was loaded (checkpoint paths after rename '
            f'look like {sample}; model paths like '
            f'{", ".join(sorted(flat)[:3])}); fix init_from.rename/include'
        )
    return unflatten(flat), loaded


def load_init_from(cfg, params, shardings):
    """Loads `cfg` (config.init_from) into `params`; returns params placed by `shardings`."""
    source, step = checkpoint.restore_params(cfg.path, None if cfg.step < 0 else cfg.step)
    host_target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    merged, loaded = merge_pretrained(
        host_target,
        jax.device_get(source),
        rename=[tuple(r) for r in cfg.rename],
        include=list(cfg.include),
        exclude=list(cfg.exclude),
    )
    fresh = flatten(params)
    merged = unflatten({k: (v if k in loaded else fresh[k]) for k, v in flatten(merged).items()})
    total = len(fresh)
    logging.info(
        'init_from %s step %d: loaded %d of %d parameters (%s ...)',
        cfg.path,
        step,
        len(loaded),
        total,
        ', '.join(loaded[:3]),
    )
    return jax.device_put(merged, shardings), loaded
