"""Shared by the representation evaluators: model outputs for whole data splits.

Not an evaluator itself (no `Evaluator`). Inputs go through the run's batch sharding
(`ctx.to_global`), outputs come back replicated, so every host sees all rows.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbig.data.one_pass import OnePass


def plain_data_config(data_cfg) -> ml_collections.ConfigDict:
    """A copy of the data config asking for un-augmented images (`views=0` when present)."""
    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    if 'views' in cfg:
        cfg.views = 0
    return cfg


def jitted_method(ctx, method: str):
    """(params, x global array) -> model.apply(..., method=method) replicated on all devices."""

    def fn(params, x):
        return ctx.model.apply({'params': params}, x, method=method)

    return jax.jit(fn, out_shardings=NamedSharding(ctx.mesh, P()))


def run_rows(ctx, fn, params, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over `rows` [n, ...] (identical on every host) in global batches of batch_size,
    each row once (`jaxbig.data.one_pass`: the last batch padded with copies of the last
    row, whose outputs are dropped)."""
    plan = OnePass(len(rows), batch_size=batch_size, process_index=ctx.process_index,
                   process_count=ctx.process_count)
    out = []
    for i in range(plan.num_batches):
        mine = rows[plan.rows(i)[0]]
        out.append(np.asarray(jax.device_get(fn(params, ctx.to_global(mine)))))
    return np.concatenate(out)[:len(rows)]


class SplitEmbedder:
    """Every example of a split once through `method`: the split's one-pass pipeline
    (`jaxbig.data.one_pass`; the first max_examples of its fixed order, 0 = all), the
    padding rows of its last batch dropped.

    __call__(params) -> (outputs [n, ...], labels int [n] or None), n = min(split size,
    max_examples); `column(key)` gives other batch columns (e.g. 'text') of the same rows.
    """

    def __init__(self, ctx, data_cfg, *, split, batch_size, method, input_key, max_examples):
        def build(n):
            return ctx.build_pipeline(data_cfg, split=split, batch_size=batch_size, seed=0,
                                      one_pass=True, num_examples=n)

        self.pipeline = build(0)
        if max_examples and max_examples < self.pipeline.num_examples:  # a cap, not a demand
            self.pipeline = build(max_examples)
        self.n, self.num_batches = self.pipeline.num_examples, self.pipeline.num_batches
        self.input_key, self.ctx = input_key, ctx
        self.fn = jitted_method(ctx, method)
        gather = jax.jit(lambda x: x, out_shardings=NamedSharding(ctx.mesh, P()))
        self.columns = {}
        for i in range(self.num_batches):  # fixed across evaluations: read once
            batch = self.pipeline.get_batch(i)
            batch.pop('example_mask')  # padding: the global rows past n, cut off below
            for k, v in batch.items():
                self.columns.setdefault(k, []).append(
                    np.asarray(jax.device_get(gather(ctx.to_global(v)))) if k != input_key else v
                )
        self.labels = (
            np.concatenate(self.columns['label'])[: self.n] if 'label' in self.columns else None
        )

    def __call__(self, params):
        out = [
            np.asarray(jax.device_get(self.fn(params, self.ctx.to_global(x))))
            for x in self.columns[self.input_key]
        ]
        return np.concatenate(out)[: self.n], self.labels

    def column(self, key: str) -> np.ndarray:
        """All rows of another batch column (e.g. 'text'), [n, ...]."""
        return np.concatenate(self.columns[key])[: self.n]


def train_test_embedders(cfg, ctx) -> tuple[SplitEmbedder, SplitEmbedder]:
    """The (train, test) embedders of a features evaluator (linear_probe, knn): config keys
    method, input_key, batch_size (0 = train.batch_size), train_split / test_split ('' =
    data.train_split / data.val_split), max_train / max_test (0 = the whole split)."""
    data_cfg = plain_data_config(ctx.config.data)
    common = dict(
        batch_size=cfg.get('batch_size', 0) or ctx.config.train.batch_size,
        method=cfg.get('method', 'features'),
        input_key=cfg.get('input_key', 'image'),
    )
    train = SplitEmbedder(ctx, data_cfg, split=cfg.get('train_split', '') or data_cfg.train_split,
                          max_examples=cfg.get('max_train', 0), **common)
    test = SplitEmbedder(ctx, data_cfg, split=cfg.get('test_split', '') or data_cfg.val_split,
                         max_examples=cfg.get('max_test', 0), **common)
    return train, test
