"""Frozen-backbone features, computed once (`data.pipeline='features'`), for fine-tuning a
head without running the backbone per step (the `features` fine-tuning mode).

Data config: source (the image/text data config the backbone reads, e.g. views=0 digits,
or the text_classes task), backbone_from (a workdir: its config.json builds the model — with
its LoRA adapters if it has any —, its checkpoint gives params), backbone_step (-1 =
latest), embed_batch, embed_examples ({split: n} or one n for every split: embed the first n
examples, rounded up to whole embed batches; 0 = the whole split, which needs a finite
source — the text task samples snippets without end, so it must set n), pooling ('last' |
'mean': how [b, T, E] per-token features, e.g. a GPT's, become [b, E] under the source's
mask; `jaxbig.models.classifier.pool`). Each split is embedded once per process with the
model's `features` method (jitted, float32) and cached in memory; then batches are
`inputs float32[b, E]`, `label int32[b]` in a seeded per-epoch shuffle, a pure function of
(seed, i) like every pipeline (`one_pass=True`, for evaluators: each embedded example
once, with `example_mask`; `jaxbig.data.one_pass`). Every process embeds the whole split
(fine for the embedded datasets; shard it before using this on ImageNet-sized data).
"""

from __future__ import annotations

import functools
import inspect
import os

import jax
import numpy as np

from jaxbig.config import ConfigError, from_json
from jaxbig.data import image_sources
from jaxbig.data import one_pass as one_pass_lib


def prepare(config) -> None:
    from jaxbig import data

    data.prepare(config.source)


@functools.lru_cache(maxsize=4)
def _embedded(
    source_json: str,
    backbone_from: str,
    step: int,
    split: str,
    batch: int,
    examples: int = 0,
    pooling: str = 'last',
):
    """(features float32[n, E], labels int32[n]) of the first n examples of `split`."""
    from jaxbig import data
    from jaxbig import run as run_lib
    from jaxbig.models.classifier import pool

    source = from_json(source_json)
    try:
        run = run_lib.load_run(backbone_from, None if step < 0 else step)
    except (ConfigError, FileNotFoundError) as e:
        raise ConfigError(f'data.backbone_from={backbone_from!r}: {e}') from None
    model, params = run.model, run.params
    pipe = data.build_pipeline(source, split=split, batch_size=batch, seed=0)
    if hasattr(pipe, 'split'):
        n = min(examples, len(pipe.split)) if examples > 0 else len(pipe.split)
    elif examples > 0:
        n = examples
    else:
        raise ConfigError(
            f'data.embed_examples: data.source.pipeline={source.get("pipeline", "lm")!r} has '
            f'no fixed size; set how many {split!r} examples to embed (e.g. 4096)'
        )
    takes_mask = 'mask' in inspect.signature(model.features).parameters  # classifier: pools

    def features_of(p, x, mask):
        y = model.apply({'params': p}, x, **({'mask': mask} if takes_mask else {}),
                        method='features')
        return pool(y, mask, pooling) if y.ndim == 3 else y

    features_of = jax.jit(features_of)
    feats, labels = [], []
    for i in range((n + batch - 1) // batch):
        rows = pipe.get_batch(i)
        keep = min(batch, n - i * batch)
        x = rows['image'] if 'image' in rows else rows['inputs']
        feats.append(np.asarray(features_of(params, x, rows.get('mask')), np.float32)[:keep])
        labels.append(rows['label'][:keep])
    return np.concatenate(feats), np.concatenate(labels).astype(np.int32)


class FeaturePipeline:
    def __init__(self, features, labels, *, batch_size, seed, process_index, process_count,
                 one_pass=False, num_examples=0, split=''):
        self.features, self.labels = features, labels
        self.rows = image_sources.ExampleRows(
            len(labels), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        self.order = self.rows.order
        one_pass_lib.attach(self, self.rows.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        _, ids, example_mask = self.rows.batch(i)
        return one_pass_lib.with_mask({'inputs': self.features[ids], 'label': self.labels[ids]},
                                      example_mask)


def _examples(config, split: str) -> int:
    n = config.get('embed_examples', 0)
    return int(n.get(split, 0)) if hasattr(n, 'get') else int(n)


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    from jaxbig.config import to_json

    features, labels = _embedded(
        to_json(config.source),
        os.path.abspath(config.backbone_from),
        config.get('backbone_step', -1),
        split,
        config.get('embed_batch', 256),
        _examples(config, split),
        config.get('pooling', 'last'),
    )
    return FeaturePipeline(
        features,
        labels,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        one_pass=one_pass,
        num_examples=num_examples,
        split=split,
    )
