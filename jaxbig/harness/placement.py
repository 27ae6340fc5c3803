"""Where a run's params live while the harness scores with them: the mesh of the run's own
`parallel` section on this machine's devices (falling back to all devices data-parallel when
that mesh does not fit them, e.g. a pod run read back on one host), and each parameter's
sharding from the model's logical axes, as training places them (jaxbig.run.setup)."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxbig.errors import ConfigError


def params_shardings(config):
    """(mesh, params' NamedShardings) for the run of `config`: training's state shardings
    (step.init_fn, parallel.state_logical_specs) of a state with no optimizer moments."""
    from jaxbig import models, parallel
    from jaxbig import step as step_lib

    try:
        mesh = parallel.make_mesh(config.parallel)
    except ConfigError as e:
        logging.info('harness: %s; scoring data-parallel over %d devices', e, jax.device_count())
        mesh = parallel.make_mesh(ml_collections.ConfigDict({'data': -1}))
    rules = parallel.rules_from_config(config.parallel)
    model, example = models.from_config(config), (jnp.zeros((1, 8), jnp.int32),)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(step_lib.init_fn(model, optax.identity(), example, 0))
        boxed = jax.eval_shape(step_lib.init_fn(model, optax.identity(), example, 0, boxed=True))
        logical = parallel.state_logical_specs(abstract, nn.get_partition_spec(boxed))
        return mesh, parallel.logical_to_shardings(logical.params, mesh, rules)
