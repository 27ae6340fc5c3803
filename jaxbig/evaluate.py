"""`jaxbig eval --workdir DIR`: re-run a finished run's evaluators on its best checkpoint
(`<workdir>/best/`, kept when `train.best_metric` is set) or else its latest one.

Uses the run's own resolved config (`config.json`), so nothing has to be repeated on the
command line; `--step N` picks a checkpoint of `<workdir>/checkpoints/`. Prints one line per
metric and appends them to `<workdir>/eval_results.jsonl`.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np

from jaxbig import checkpoint, config as config_lib, data as data_lib, evals, losses, models
from jaxbig import parallel, step as step_lib


def evaluate(workdir: str, step: int | None = None) -> dict[str, float]:
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{workdir}: no config.json (not a jaxbig workdir)')
    with open(path) as f:
        config = config_lib.from_json(f.read())
    parallel.maybe_initialize_distributed(config.parallel)
    mesh = parallel.make_mesh(config.parallel)
    rules = parallel.rules_from_config(config.parallel)
    if jax.process_index() == 0:
        data_lib.prepare(config.data)
    model = models.from_config(config)
    loss_module = losses.get_loss_module(config.loss.name)
    loss_fn = losses.bind(loss_module, config.loss)
    best = os.path.join(workdir, 'best')
    source = best if step is None and os.path.isdir(os.path.join(best, 'checkpoints')) else workdir
    params, loaded_step = checkpoint.restore_params(source, step)
    host = {'process_index': jax.process_index(), 'process_count': jax.process_count()}
    batch_sharding = parallel.batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(
            lambda: model.init(
                {'params': jax.random.PRNGKey(0)},
                *loss_module.model_inputs(_one_row(config, host)),
                train=False,
            )['params']
        )
        shapes = jax.tree.map(lambda x: getattr(x, 'value', x), boxed,
                              is_leaf=lambda x: isinstance(x, nn.Partitioned))
        specs = parallel.fit_specs(nn.get_partition_spec(boxed), shapes, mesh, rules)
        shardings = parallel.logical_to_shardings(specs, mesh, rules)
        params = jax.device_put(jax.device_get(params), shardings)
        eval_step = step_lib.jit_eval_step(
            step_lib.make_eval_step(model, loss_fn, config.loss), shardings, batch_sharding
        )
        ctx = evals.EvalContext(
            config=config,
            model=model,
            loss_module=loss_module,
            mesh=mesh,
            rules=rules,
            params_shardings=shardings,
            to_global=lambda b: parallel.to_global(b, batch_sharding),
            eval_step=eval_step,
            workdir=workdir,
            **host,
        )
        results = {}
        for _, evaluator in evals.build_evaluators(config, ctx).values():
            results.update(evaluator.run(params))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, 'eval_results.jsonl'), 'a') as f:
            f.write(
                json.dumps(
                    {'step': loaded_step, 'checkpoint': os.path.relpath(source, workdir), **results}
                )
                + '\n'
            )
        print(f'{workdir}: checkpoint {os.path.relpath(source, workdir)} step {loaded_step}')
        for k, v in sorted(results.items()):
            print(f'  {k:32s} {v:.6g}')
    return results


def _one_row(config, host):
    pipe = data_lib.build_pipeline(
        config.data, split=config.data.train_split, batch_size=host['process_count'], seed=0, **host
    )
    return jax.tree.map(lambda x: np.asarray(x[:1]), pipe.get_batch(0))
