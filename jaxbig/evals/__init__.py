"""Evaluators, one module per kind, chosen by `config.evals.<name>.type`.

Each module exposes `Evaluator(cfg, ctx)` with `run(params) -> {metric name: float}`, where
`cfg` is that evaluator's config section and `ctx` an `EvalContext` (below) holding what
evaluators need from the run. Metric names are prefixed with the evaluator's name
(`val/loss`). Evaluators run every `cfg.every` steps (0 = `train.eval_every`) and at the end.

    c.evals = dict(val=dict(type='loss', split='validation', num_examples=0))

Batch evaluators score each example of their split exactly once: they build the split's
pipeline with `ctx.build_pipeline(..., one_pass=True, num_examples=n)` (`jaxbig.data.one_pass`:
n = 0 the whole split, else the first n of a fixed order, the same in every run and at every
batch size), loop over its `num_batches` batches, weigh rows by `example_mask` (the padding
of the last batch counts nothing) and log `<name>/num_examples`. A `num_examples` the split
cannot give is a one-line ConfigError naming `evals.<name>.num_examples`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from jaxbig.config import ConfigError, resolve


@dataclasses.dataclass
class EvalContext:
    config: Any  # the whole experiment config
    model: Any  # the linen Model
    loss_module: Any  # jaxbig.losses.<name>
    mesh: Any
    rules: tuple
    params_shardings: Any
    to_global: Callable  # host-local numpy batch -> global jax arrays
    eval_step: Callable  # jitted (params, global batch) -> loss metrics, train=False
    workdir: str
    process_index: int = 0
    process_count: int = 1

    def build_pipeline(self, data_config, *, split: str, batch_size: int, seed: int = 0,
                       one_pass: bool = False, num_examples: int = 0):
        """`data_config`'s pipeline over `split`, this process's rows of global batches of
        `batch_size`: the endless stream of `seed`, or with `one_pass` each of `num_examples`
        examples (0 = all) once, with `num_examples`, `num_batches` and `example_mask`."""
        from jaxbig import data

        kwargs = dict(one_pass=True, num_examples=num_examples) if one_pass else {}
        if one_pass:
            module = data.pipeline_module(data_config)
            if 'one_pass' not in inspect.signature(module.build_pipeline).parameters:
                raise ConfigError(f'data.pipeline={data_config.get("pipeline", "lm")!r}: its '
                                  'build_pipeline has no one_pass mode, which evaluators need '
                                  '(see jaxbig/data/one_pass.py)')
        return data.build_pipeline(
            data_config,
            split=split,
            batch_size=batch_size,
            seed=seed,
            process_index=self.process_index,
            process_count=self.process_count,
            **kwargs,
        )


def build_evaluators(config, ctx: EvalContext) -> dict[str, tuple[int, Any]]:
    """{name: (every, evaluator)} from `config.evals`."""
    from jaxbig.data.one_pass import NumExamplesError

    out = {}
    for name, cfg in (config.get('evals') or {}).items():
        kind = cfg.get('type', '') or name  # an evaluator named after its type may omit it
        module = resolve(__name__, kind, f'evals.{name}.type', 'Evaluator')
        every = cfg.get('every', 0) or config.train.eval_every
        n = cfg.get('num_examples', 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f'evals.{name}.num_examples={n!r}: must be an int >= 0 (0 = the '
                              'whole split)')
        try:
            out[name] = (every, module.Evaluator(cfg, ctx, name=name))
        except NumExamplesError as e:  # 'num_examples=...: why'
            raise ConfigError(f'evals.{name}.{e}') from None
    return out
