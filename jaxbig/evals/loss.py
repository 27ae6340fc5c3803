"""Held-out loss: the task's own loss_fn over a fixed set of validation batches.

Reports every metric the loss returns, averaged over `num_batches` batches (each batch is
the same size, so the mean of batch means is the mean over examples), and for language
models the perplexity of the averaged loss, exp(mean nats/token) — not the mean of
per-batch perplexities.
"""

from __future__ import annotations

import math

import jax
import numpy as np


class Evaluator:
    def __init__(self, eval_step, pipeline, num_batches: int, to_global, prefix: str = 'val'):
        """eval_step: jitted (params, global batch) -> metrics. pipeline: `get_batch(i)` gives
        host-local numpy batches. to_global: host-local batch -> global arrays."""
        if num_batches < 1:
            raise ValueError(f'evals need at least one batch, got num_batches={num_batches}')
        self.eval_step, self.pipeline, self.num_batches = eval_step, pipeline, num_batches
        self.to_global, self.prefix = to_global, prefix

    def run(self, params) -> dict[str, float]:
        sums = None
        for i in range(self.num_batches):
            metrics = self.eval_step(params, self.to_global(self.pipeline.get_batch(i)))
            sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
        means = {
            k: float(np.asarray(v)) / self.num_batches for k, v in jax.device_get(sums).items()
        }
        if 'perplexity' in means:
            means['perplexity'] = math.exp(means['loss'])
        return {f'{self.prefix}/{k}': v for k, v in means.items()}
