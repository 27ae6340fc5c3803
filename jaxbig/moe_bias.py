"""The rule that moves a Mixture-of-Experts layer's balancing bias (DeepSeek-V3's
auxiliary-loss-free load balancing; jaxbig.models.moe, `model.moe.bias_rate`).

Each MoE layer's `router_bias` [E] is added to the router's probabilities for the top-k
choice only. Its gradient is each expert's load minus the layer's mean load over the whole
update (the loss makes it so: jaxbig.losses.moe_aux), and `with_rule` moves it by
-rate * sign(gradient): an overloaded expert's bias falls by `rate`, an idle one's rises.
It never passes through the main chain (no clipping, decay, moments or schedule).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

NAME = 'router_bias'  # the parameter's name in a MoE layer


def is_bias(path) -> bool:
    """Whether a tree path ends at a MoE layer's router_bias."""
    return jax.tree_util.keystr(path, simple=True, separator='/').split('/')[-1] == NAME


def with_rule(tx, rate: float, freeze=()) -> optax.GradientTransformation:
    """`tx` for every parameter but the router_bias leaves, which move by -rate * sign(g).
    One that an `optimizer.freeze` pattern names stays frozen (it goes to `tx`)."""
    def labels(params):
        def label(path, _):
            name = jax.tree_util.keystr(path, simple=True, separator='/')
            frozen = any(re.fullmatch(p, name) for p in freeze)
            return 'moe_bias' if is_bias(path) and not frozen else 'main'
        return jax.tree_util.tree_map_with_path(label, params)

    def sign_step(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: -rate * jnp.sign(g), updates), state

    rule = optax.GradientTransformation(lambda params: optax.EmptyState(), sign_step)
    return optax.multi_transform({'main': tx, 'moe_bias': rule}, labels)
