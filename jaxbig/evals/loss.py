"""Held-out loss: the task's own loss_fn over a data split, each example once.

Config: type='loss', split (default data.val_split), num_examples (0 = the whole split;
else the first num_examples of the split's fixed order — the same examples for every run
and batch size), batch_size (0 = train.batch_size). The pipeline covers them in one pass,
its last batch padded with rows that count nothing (`example_mask`).

Every metric the loss reports is aggregated as sums and counts over all scored examples
and divided once (jaxbig/aggregate.py): `loss` is token-weighted (nats per target over all
targets, not a mean of batch means) and `perplexity` is exp of it. Also logged:
`num_examples` (examples scored), the loss's counts (`targets` for token losses,
`examples` for classification).

Language-model data (a pipeline with a `tokenizer`) also gets `bytes` (the UTF-8 bytes of
the scored targets' text, `tokenizer.target_bytes`) and `bits_per_byte` = summed nats /
bytes / ln 2, so `loss / ln 2 * targets / bytes = bits_per_byte` exactly and runs with
different tokenizers compare; with the byte tokenizer it is loss / ln 2.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxbig import aggregate
from jaxbig.config import ConfigError


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'val'):
        num_examples = cfg.get('num_examples', 0)
        if num_examples < 0:
            raise ConfigError(f'evals.{name}.num_examples={num_examples}: must be >= 0 '
                              '(0 = the whole split)')
        data_cfg = ctx.config.data
        sections = [('', data_cfg)]
        if data_cfg.get('mixture'):  # each source on its own: <name>/<label>/<metric>
            from jaxbig.data import mixture

            sections = [(label, section) for label, _, section in mixture.sources(data_cfg)]
        self.pipelines = [(label, ctx.build_pipeline(
            section,
            split=cfg.get('split', '') or section.val_split,
            batch_size=cfg.get('batch_size', 0) or ctx.config.train.batch_size,
            one_pass=True,
            num_examples=num_examples,
        )) for label, section in sections]
        self.pipeline = self.pipelines[0][1]
        self.eval_step, self.to_global, self.prefix = ctx.eval_step, ctx.to_global, name
        tokenizer = getattr(self.pipeline, 'tokenizer', None)
        self.tokenizer = tokenizer if hasattr(tokenizer, 'target_bytes') else None

    def run(self, params) -> dict[str, float]:
        """The metrics over every scored example; with a mixture also each source's."""
        if len(self.pipelines) == 1:
            return self._score(params, self.pipeline, self.prefix)[0]
        out, total, size = {}, None, 0.0
        for label, pipeline in self.pipelines:
            metrics, sums, bytes_ = self._score(params, pipeline, f'{self.prefix}/{label}')
            out.update(metrics)
            total, size = aggregate.add(total, sums), size + bytes_
        return {**out, **self._finish(total, size, self.prefix)}

    def _score(self, params, pipeline, prefix):
        """({prefix/metric: value}, the summed metrics, the scored targets' bytes)."""
        sums, size = None, 0.0  # size: host-local UTF-8 bytes of the scored targets
        for i in range(pipeline.num_batches):
            batch = pipeline.get_batch(i)
            metrics = jax.device_get(self.eval_step(params, self.to_global(batch)))
            sums = aggregate.add(sums, metrics)
            if self.tokenizer is not None and 'targets' in batch:
                mask = np.asarray(batch.get('mask', np.ones(batch['targets'].shape)), np.float64)
                mask = mask * np.asarray(batch['example_mask'], np.float64)[:, None]
                size += float((self.tokenizer.target_bytes(batch['inputs'], batch['targets'])
                               * mask).sum())
        size = _global_sum(size)
        sums = dict(sums, num_examples=aggregate.Sum(np.float64(pipeline.num_examples)))
        return self._finish(sums, size, prefix), sums, size

    @staticmethod
    def _finish(sums, size: float, prefix: str) -> dict[str, float]:
        """Divides the summed metrics once; bits per byte from the summed nats and bytes."""
        out = aggregate.host_values(sums)
        if size > 0 and 'loss' in sums:
            out['bytes'] = size
            out['bits_per_byte'] = float(np.asarray(sums['loss'].total, np.float64)) / size / (
                math.log(2))
        return {f'{prefix}/{k}': v for k, v in out.items()}


def _global_sum(value: float) -> float:
    """A host-local number summed over processes."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return float(np.asarray(multihost_utils.process_allgather(np.float64(value))).sum())
