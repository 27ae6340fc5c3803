"""Where a run's params live while the harness scores with them: the mesh of the run's own
`parallel` section on this machine's devices (falling back to all devices data-parallel when
that mesh does not fit them, e.g. a pod run read back on one host), and each parameter's
sharding from the model's logical axes, as training places them (jaxbig.run.setup)."""

from __future__ import annotations

import collections
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxbig.errors import ConfigError

_Params = collections.namedtuple('_Params', 'params')  # a train state of params only


def params_shardings(config):
    """(mesh, params' NamedShardings) for the run of `config`."""
    from jaxbig import models, parallel
    from jaxbig.models import layout

    try:
        mesh = parallel.make_mesh(config.parallel)
    except ConfigError as e:
        logging.info('harness: %s; scoring data-parallel over %d devices', e, jax.device_count())
        mesh = parallel.make_mesh(ml_collections.ConfigDict({'data': -1}))
    rules = parallel.rules_from_config(config.parallel)
    model = models.from_config(config)
    tokens = jnp.zeros((1, 8), jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        def init():
            rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
            return layout.init_params(model, rngs, tokens, train=False)

        boxed = jax.eval_shape(init)
        abstract = jax.eval_shape(lambda: nn.unbox(init()))
        logical = parallel.state_logical_specs(
            _Params(abstract), nn.get_partition_spec(boxed), params_attr='params')
        return mesh, parallel.logical_to_shardings(logical.params, mesh, rules)

