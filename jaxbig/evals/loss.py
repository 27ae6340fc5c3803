"""Held-out loss: the task's own loss_fn over a fixed set of batches of a data split.

Config: type='loss', split (default data.val_split), num_batches, batch_size (0 =
train.batch_size). Reports every metric the loss returns averaged over the batches (equal
sized, so the mean of batch means is the mean over examples) and, for language models,
the perplexity of the averaged loss, exp(mean nats/token), not the mean of perplexities.
The batches are the same at every evaluation (seed 0, batch indices 0..num_batches-1).

Language-model data (a pipeline with a `tokenizer`) also gets `bits_per_byte`: the total
nats over the evaluated target tokens / the UTF-8 bytes they stand for / ln 2 (eos counts
one byte, the separator), so runs with different tokenizers compare; with the byte
tokenizer it is loss / ln 2.
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
        tokenizer = getattr(self.pipeline, 'tokenizer', None)
        self.token_bytes = (tokenizer.token_bytes() if hasattr(tokenizer, 'token_bytes')
                            else None)

    def run(self, params) -> dict[str, float]:
        sums, nats, counts = None, 0.0, np.zeros(2)  # counts: host [tokens, bytes]
        for i in range(self.num_batches):
            batch = self.pipeline.get_batch(i)
            metrics = self.eval_step(params, self.to_global(batch))
            sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
            if self.token_bytes is not None and 'targets' in batch:
                mask = batch.get('mask', np.ones(batch['targets'].shape))
                tokens, size = self._global(mask.sum(),
                                            (self.token_bytes[batch['targets']] * mask).sum())
                nats += float(metrics['loss']) * tokens  # loss: mean nats per target token
                counts += (tokens, size)
        sums = jax.device_get(sums)
        means = {k: float(np.asarray(v)) / self.num_batches for k, v in sums.items()}
        if 'perplexity' in means:
            means['perplexity'] = math.exp(means['loss'])
        if counts[1] > 0:
            means['bits_per_byte'] = nats / counts[1] / math.log(2)
        return {f'{self.prefix}/{k}': v for k, v in means.items()}

    @staticmethod
    def _global(tokens, size):
        """Host-local (target tokens, bytes) of a batch -> summed over processes."""
        local = np.asarray([tokens, size], np.float64)
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2).sum(0)
