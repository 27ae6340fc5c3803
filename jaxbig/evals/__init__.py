"""Evaluators, one module per kind, chosen by `config.evals.<name>.type`.

Each module exposes `Evaluator(cfg, ctx)` with `run(params) -> {metric name: float}`, where
`cfg` is that evaluator's config section and `ctx` an `EvalContext` (below) holding what
evaluators need from the run. Metric names are prefixed with the evaluator's name
(`val/loss`). Evaluators run every `cfg.every` steps (0 = `train.eval_every`) and at the end.

    c.evals = dict(val=dict(type='loss', split='validation', num_batches=8))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxbig.config import resolve


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

    def build_pipeline(self, data_config, *, split: str, batch_size: int, seed: int = 0):
        from jaxbig import data

        return data.build_pipeline(
            data_config,
            split=split,
            batch_size=batch_size,
            seed=seed,
            process_index=self.process_index,
            process_count=self.process_count,
        )


def build_evaluators(config, ctx: EvalContext) -> dict[str, tuple[int, Any]]:
    """{name: (every, evaluator)} from `config.evals`."""
    out = {}
    for name, cfg in (config.get('evals') or {}).items():
        kind = cfg.get('type', '')
        module = resolve(__name__, kind, f'evals.{name}.type', 'Evaluator')
        every = cfg.get('every', 0) or config.train.eval_every
        out[name] = (every, module.Evaluator(cfg, ctx, name=name))
    return out
