"""Held-out loss: the task's own loss_fn over a fixed set of batches of a data split.

Config: type='loss', split (default data.val_split), num_batches, batch_size (0 =
train.batch_size). Reports every metric the loss returns averaged over the batches (equal
sized, so the mean of batch means is the mean over examples) and, for language models,
the perplexity of the averaged loss, exp(mean nats/token), not the mean of perplexities.
The batches are the same at every evaluation (seed 0, batch indices 0..num_batches-1).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxbig.config import ConfigError


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'val'):
        self.num_batches = cfg.get('num_batches', 8)
        if self.num_batches < 1:
            raise ConfigError(f'evals.{name}.num_batches={self.num_batches}: must be >= 1')
        data_cfg = ctx.config.data
        self.pipeline = ctx.build_pipeline(
            data_cfg,
            split=cfg.get('split', '') or data_cfg.val_split,
            batch_size=cfg.get('batch_size', 0) or ctx.config.train.batch_size,
        )
        self.eval_step, self.to_global, self.prefix = ctx.eval_step, ctx.to_global, name

    def run(self, params) -> dict[str, float]:
        sums = None
        for i in range(self.num_batches):
            metrics = self.eval_step(params, self.to_global(self.pipeline.get_batch(i)))
            sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
        sums = jax.device_get(sums)
        means = {k: float(np.asarray(v)) / self.num_batches for k, v in sums.items()}
        if 'perplexity' in means:
            means['perplexity'] = math.exp(means['loss'])
        return {f'{self.prefix}/{k}': v for k, v in means.items()}
