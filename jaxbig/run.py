"""A run, built and read back, one way for every command.

    setup(config, workdir)        -> Setup: mesh, rules, model, loss, optimizer, the state's
                                     abstract shapes and shardings, the compiled eval step,
                                     the evaluators and their context. `jaxbig train` and
                                     `jaxbig eval` both start here, so they agree on the
                                     model, its shardings and the evaluators.
    load_run(workdir, step, best) -> Run: config, model, params, step, tokenizer. Everything
                                     that reads a trained run back (eval, generate, lora
                                     merge, quantize, export, the features pipeline, the
                                     distillation teacher) uses it: config.json is read in
                                     one place, and only the params are read from the
                                     checkpoint (an orbax partial restore: no optimizer
                                     moments). init_from, which needs no source model, uses
                                     the same params-only `checkpoint.restore_params`.

A workdir holds `config.json` (the resolved config), `checkpoints/<step>/` and, when
`train.best_metric` is set, `best/checkpoints/<step>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxbig import checkpoint
from jaxbig import config as config_lib

CONFIG_FILE = 'config.json'


# ----------------------------------------------------------------------------- reading back

@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run read back: params are host (numpy) arrays unless shardings were given."""

    config: ml_collections.ConfigDict
    model: nn.Module  # with LoRA adapters when the run trained them
    params: Any
    step: int
    checkpoint_dir: str  # the `checkpoints/` directory the params came from

    @functools.cached_property
    def tokenizer(self):
        """The text tokenizer of the run's data (`data.tokenizer`), built on first use:
        runs whose data is not text (images, captions) never need one."""
        from jaxbig.data.text import tokenizers

        return tokenizers.from_config(self.config.get('data') or {})


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote (`<workdir>/config.json`); one-line error if absent."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f'{workdir}: no {CONFIG_FILE} (not a jaxbig workdir)')
    with open(path) as f:
        return config_lib.from_json(f.read())


def checkpoint_dir(workdir: str, *, best: bool = False) -> str:
    """`<workdir>/checkpoints` (or `<workdir>/best/checkpoints` with `best`)."""
    directory = os.path.join(workdir, 'best', 'checkpoints') if best else (
        os.path.join(workdir, 'checkpoints'))
    if not os.path.isdir(directory):
        what = 'best checkpoint (train.best_metric unset?)' if best else 'checkpoints'
        raise config_lib.ConfigError(f'{workdir}: no {what} at {directory}')
    return directory


def load_run(workdir: str, step: int | None = None, *, best: bool = False,
             params_shardings=None) -> Run:
    """Reads back the run in `workdir`: its config, model, the params of checkpoint `step`
    (None = latest; with `best`, of `<workdir>/best/`) and its tokenizer.

    `params_shardings` (a tree matching the params) places them straight into their
    shardings; otherwise they are numpy arrays on the host. A missing step names the
    available ones.
    """
    from jaxbig import models

    config = read_config(workdir)
    model = models.from_config(config)
    directory = checkpoint_dir(workdir, best=best)
    params, step = checkpoint.restore_params(directory, step, shardings=params_shardings)
    return Run(config=config, model=model, params=params, step=step, checkpoint_dir=directory)


def load_frozen(workdir: str, key: str):
    """(model, params) of a trained run that a loss closes over, frozen (a distillation
    teacher, a preference reference): its config.json and latest checkpoint; a run that
    cannot be read is a one-line ConfigError naming the config key `key`."""
    try:
        run = load_run(workdir)
    except (FileNotFoundError, config_lib.ConfigError) as e:
        raise config_lib.ConfigError(f'{key}={workdir!r}: {e}') from None
    return run.model, run.params


# ----------------------------------------------------------------------------- building

@dataclasses.dataclass
class Setup:
    """What a config builds before the first step (see `setup`)."""

    mesh: jax.sharding.Mesh
    rules: tuple
    model: nn.Module
    loss_module: Any  # jaxbig.losses.<name>
    loss_fn: Any  # the bound loss function
    tx: Any  # the optax chain
    schedule: Any  # step -> learning rate
    init: Any  # () -> TrainState (fresh, unsharded)
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct
    state_shardings: Any  # TrainState of NamedSharding
    batch_sharding: jax.sharding.NamedSharding
    eval_step: Any  # jitted (params, global batch) -> metrics, train=False
    eval_context: Any  # jaxbig.evals.EvalContext
    evaluators: dict  # {name: (every, evaluator)}


def host_info() -> dict[str, int]:
    return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def setup(config: ml_collections.ConfigDict, workdir: str, *, example_batch=None,
          devices=None, with_evals: bool = True) -> Setup:
    """Builds mesh, model, loss, optimizer, state shardings, eval step and evaluators for
    `config` (resolved: see `experiment.resolve_auto`). Reads, never writes, `workdir`.

    `example_batch`: a host batch of the training split (its first row shapes the model's
    init); None reads one. The data must be prepared (`jaxbig.data.prepare`).
    `devices`: the mesh's devices (default `jax.devices()`; `jaxbig plan` passes a target's
    compile-only devices). `with_evals=False` stops after the state's shardings (eval_step,
    eval_context and evaluators are None): nothing is placed on a device.
    """
    from jaxbig import evals, losses, models, optim, parallel
    from jaxbig import step as step_lib

    mesh = parallel.make_mesh(config.parallel, devices)
    rules = parallel.rules_from_config(config.parallel)
    parallel.host_batch_rows(config.train.batch_size, mesh)
    if example_batch is None:
        example_batch = read_example_batch(config)
    model = models.from_config(config)
    loss_module = losses.get_loss_module(config.loss.name)
    losses.check_config(loss_module, config)
    loss_fn = losses.bind(loss_module, config.loss)
    tx, schedule = optim.build_optimizer(config.optimizer, config.train.steps,
                                         moe_bias_rate=moe_bias_rate(config))
    example = loss_module.model_inputs(jax.tree.map(lambda x: x[:1], example_batch))
    batch_sharding = parallel.batch_sharding(mesh)
    seed = config.train.seed
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = step_lib.init_fn(model, tx, example, seed)
        abstract_state = jax.eval_shape(init)
        boxed_params = jax.eval_shape(step_lib.init_fn(model, tx, example, seed, boxed=True))
        logical = parallel.state_logical_specs(abstract_state, nn.get_partition_spec(boxed_params))
        state_shardings = parallel.logical_to_shardings(logical, mesh, rules)
        if not with_evals:
            return Setup(mesh=mesh, rules=rules, model=model, loss_module=loss_module,
                         loss_fn=loss_fn, tx=tx, schedule=schedule, init=init,
                         abstract_state=abstract_state, state_shardings=state_shardings,
                         batch_sharding=batch_sharding, eval_step=None, eval_context=None,
                         evaluators=None)
        eval_step = step_lib.jit_eval_step(
            step_lib.make_eval_step(model, loss_fn, config.loss),
            state_shardings.params,
            batch_sharding,
        )
        ctx = evals.EvalContext(
            config=config,
            model=model,
            loss_module=loss_module,
            mesh=mesh,
            rules=rules,
            params_shardings=state_shardings.params,
            to_global=lambda b: parallel.to_global(b, batch_sharding),
            eval_step=eval_step,
            workdir=workdir,
            **host_info(),
        )
        evaluators = evals.build_evaluators(config, ctx)
    return Setup(mesh=mesh, rules=rules, model=model, loss_module=loss_module, loss_fn=loss_fn,
                 tx=tx, schedule=schedule, init=init, abstract_state=abstract_state,
                 state_shardings=state_shardings, batch_sharding=batch_sharding,
                 eval_step=eval_step, eval_context=ctx, evaluators=evaluators)


def train_step_fn(config: ml_collections.ConfigDict, s: Setup, *, pmap_axis=None):
    """The (un-jitted) update of `config` built from `s`: what `jaxbig train` compiles (with
    `step.multi_step` on top when train.steps_per_call > 1) and `jaxbig plan` costs."""
    from jaxbig import losses
    from jaxbig import step as step_lib

    t = config.train
    return step_lib.make_train_step(
        s.model, s.loss_fn, config.loss, s.tx, s.schedule, config.optimizer.grad_accum_steps,
        skip_nonfinite=t.skip_nonfinite_steps, poison_step=t.debug_nan_at_step,
        pmap_axis=pmap_axis,
        trainable=trainable_mask(config.optimizer, s.abstract_state.params),
        coupled=losses.coupled_parts(s.loss_module),
    )


def moe_bias_rate(config) -> float:
    """model.moe.bias_rate of a Mixture-of-Experts model (0.0 otherwise)."""
    moe = config.model.get('moe') or {}
    return float(moe.get('bias_rate', 0.0)) if moe.get('experts') else 0.0


def trainable_mask(optimizer_config, params):
    """Tree of bools (False = frozen by `optimizer.freeze`, or a MoE layer's router_bias,
    whose "gradient" is a load count) for `params`, or None when all count: the parameters
    whose gradients `train/grad_norm` measures (the optimizer's clipping never sees the
    router_bias either: jaxbig.moe_bias)."""
    from jaxbig import moe_bias, optim

    has_bias = any(moe_bias.is_bias(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    if not optimizer_config.freeze and not has_bias:
        return None
    groups = (optim.param_groups(params, freeze=list(optimizer_config.freeze), mults=[])
              if optimizer_config.freeze else jax.tree.map(lambda _: 'default', params))
    return jax.tree_util.tree_map_with_path(
        lambda p, g: g != 'frozen' and not moe_bias.is_bias(p), groups)


def read_example_batch(config):
    """One small host batch of the training split (shapes the model's init)."""
    from jaxbig import data

    host = host_info()
    pipe = data.build_pipeline(config.data, split=config.data.train_split,
                               batch_size=host['process_count'], seed=0, **host)
    return jax.tree.map(lambda x: np.asarray(x[:1]), pipe.get_batch(0))
