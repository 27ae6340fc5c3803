"""An experiment as the commands run it: the config file loaded, overridden and resolved.

    config = experiment.load_config('experiments/lm.py:size=tiny', ['--config.train.steps=9'])

`resolve_auto` fills the keys an experiment leaves at 'auto' from the values they depend on
— some need the data (the tokenizer's vocabulary, the dataset's classes) — so it lives
here, above both `jaxbig.config` (the ground floor: files, overrides, errors) and
`jaxbig.data`, not in config.py.
"""

from __future__ import annotations

import ml_collections

from jaxbig import config as config_lib
from jaxbig import data
from jaxbig.config import AUTO
from jaxbig.data.text import tokenizers


def load_config(spec: str, extra: list[str]) -> ml_collections.ConfigDict:
    """`--config FILE[:arg]` plus `--config.a.b=v` overrides, with 'auto' values resolved."""
    config = config_lib.load(spec)
    config_lib.apply_overrides(config, config_lib.split_overrides(extra))
    return resolve_auto(config)


def resolve_auto(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills the keys left at 'auto' from the values they depend on, after overrides (so
    `--config.model.num_layers=12` on a 4-layer preset scans, and `--config.train.steps`
    moves the warmup). In place; idempotent; the resolved values go to config.json.

        model.scan_layers        'auto' -> nn.scan over depth when num_layers > 6 (unrolled
                                 layers run ~12 % faster on CPU at 4-6 layers; scan keeps
                                 compile time flat in depth)
        model.remat              'auto' -> 'dots' when embed_dim >= 768 (GPT-2-small width
                                 and up), else 'none' (benchmarks/RESULTS.md)
        optimizer.warmup_steps   'auto' -> 5 % of train.steps (at least 1)
        model.vocab_size         'auto' -> the vocabulary of data.tokenizer (bytes: 256)
        model.num_classes        'auto' -> the classes of the data (`jaxbig.data.num_classes`)
    """
    model, opt = config.get('model'), config.get('optimizer')
    if model is not None:
        with model.ignore_type():
            if model.get('vocab_size') == AUTO:
                model.vocab_size = tokenizers.from_config(config.get('data') or {}).vocab_size
            if model.get('num_classes') == AUTO:
                model.num_classes = data.num_classes(config.data)
            if model.get('scan_layers') == AUTO:
                model.scan_layers = model.get('num_layers', model.get('depth', 0)) > 6
            if model.get('remat') == AUTO:
                model.remat = 'dots' if model.get('embed_dim', 0) >= 768 else 'none'
    if opt is not None and opt.get('warmup_steps') == AUTO:
        with opt.ignore_type():
            opt.warmup_steps = max(config.train.steps // 20, 1)
    return config
