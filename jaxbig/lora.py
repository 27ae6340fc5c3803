"""LoRA: low-rank adapters on chosen Dense / Linear kernels (the `lora` fine-tuning mode).

    config.lora = dict(targets=['.*attn/(query|value)/kernel'], rank=8, alpha=16.0)

Each target (a regex, fullmatch on '/'-joined parameter paths) must name kernels of Dense /
DenseGeneral / `layers.Linear` layers or a Mixture-of-Experts layer's stacked expert kernels
(`.*experts/(gate|up|down)/kernel`: one adapter pair per expert). A kernel W of shape
[*stack, *in, *out] (stack: the `layers` axis of nn.scan, and the experts' axis; in: the
dims the layer contracts) gets

    A [*stack, *in, rank] ~ N(0, 1 / prod(in))    (kaiming-like)
    B [*stack, rank, *out] = 0                      (so training starts at the base model)

stored beside the model's own parameters at `lora/<kernel path>/{a,b}`, and the layer
computes y = x W + (alpha / rank) x A B, by running the model with the merged kernel
W + (alpha / rank) A B (`merge`). Only the adapters should train: freeze the rest with
`optimizer.freeze` (e.g. ['encoder/.*'] to train adapters and a new head, or
['(?!lora/).*'] for adapters only).

`wrap(model, config.lora)` returns a model whose `init` adds the adapters and whose `apply`
merges them, so the loop, evaluators and generation run it unchanged. To write plain
weights that the model without adapters loads (eval, generate, init_from):

    jaxbig lora merge --workdir RUN --out DIR [--step N]    (jaxbig/commands/lora.py)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbig.config import ConfigError
from jaxbig.finetune import flatten, unflatten

KEY = 'lora'  # top-level parameter collection of the adapters


def enabled(cfg) -> bool:
    return bool(cfg) and bool(list(cfg.get('targets', [])))


def wrap(model, cfg):
    """`model` with adapters when `cfg` (config.lora) names targets; else `model` itself."""
    if not enabled(cfg):
        return model
    return LoraModel(
        model,
        targets=tuple(cfg.targets),
        rank=int(cfg.get('rank', 8)),
        alpha=float(cfg.get('alpha', 16.0)),
    )


def unwrap(model):
    """The model inside a LoRA wrapper (`wrap`); any other model itself."""
    return model.model if isinstance(model, LoraModel) else model


def merge(params, scale: float):
    """Base params (no `lora` subtree) with every adapted kernel W -> W + scale * A B.

    The split of W's dims into [*stack, *in, *out] follows from the shapes of A and B.
    Computed in float32, returned in W's dtype. Params without adapters pass through.
    """
    if KEY not in params:
        return params
    adapters = flatten(params[KEY])
    flat = flatten({k: v for k, v in params.items() if k != KEY})
    for path in sorted({p.rsplit('/', 1)[0] for p in adapters}):
        a, b, w = adapters[path + '/a'], adapters[path + '/b'], flat[path]
        flat[path] = (w.astype(jnp.float32) + scale * low_rank_product(a, b, w.shape)).astype(
            w.dtype
        )
    return unflatten(flat)


def low_rank_product(a, b, shape):
    """A [*stack, *in, r] x B [*stack, r, *out] -> [*stack, *in, *out] (= `shape`), float32."""
    n_stack = a.ndim + b.ndim - 2 - len(shape)
    stack = shape[:n_stack]
    s = math.prod(stack)
    a2 = jnp.reshape(a.astype(jnp.float32), (s, -1, a.shape[-1]))
    b2 = jnp.reshape(b.astype(jnp.float32), (s, b.shape[n_stack], -1))
    return jnp.reshape(jnp.einsum('sir,sro->sio', a2, b2), shape)


class LoraModel:
    """A linen model plus adapters. `init` / `apply` follow linen's signatures; any other
    attribute (fields, `features`, ...) is the wrapped model's."""

    def __init__(self, model, *, targets, rank, alpha):
        if rank < 1:
            raise ConfigError(f'lora.rank={rank}: must be >= 1')
        if not targets:
            raise ConfigError('lora.targets is empty: name the kernels to adapt by regex')
        self.model, self.targets, self.rank, self.alpha = model, tuple(targets), rank, alpha
        self.scale = alpha / rank
        self._reported = False

    def __getattr__(self, name):
        return getattr(self.__dict__['model'], name)

    def init(self, rngs, *args, **kwargs):
        layers = {}
        with nn.intercept_methods(_record_dense_kernels(layers)):
            variables = self.model.init(rngs, *args, **kwargs)
        params = variables['params']
        if KEY in params:
            raise ConfigError(f"lora: the model already has a top-level parameter '{KEY}'")
        key = rngs['params'] if isinstance(rngs, dict) else rngs
        adapters = self.init_adapters(jax.random.fold_in(key, 0x10A), params, layers)
        return {**variables, 'params': {**params, KEY: adapters}}

    def apply(self, variables, *args, **kwargs):
        params = variables['params']
        if KEY not in params:
            raise ConfigError(
                f"lora: params have no '{KEY}' subtree (a checkpoint without adapters); "
                'remove config.lora to run the plain model'
            )
        return self.model.apply(
            {**variables, 'params': merge(params, self.scale)}, *args, **kwargs
        )

    def init_adapters(self, key, params, layers):
        """{kernel path: {'a', 'b'}} for every targeted kernel, boxed like the kernel."""
        flat = flatten(params)
        chosen = select_targets(self.targets, flat, layers)
        adapters = {}
        for i, path in enumerate(chosen):
            box = flat[path]
            w = nn.unbox(box)
            n_in, call_ndim = layers[path]
            n_stack = w.ndim - call_ndim
            stack, fan_in = w.shape[:n_stack], w.shape[n_stack : n_stack + n_in]
            out = w.shape[n_stack + n_in :]
            std = 1.0 / math.sqrt(math.prod(fan_in))
            a = std * jax.random.normal(
                jax.random.fold_in(key, i), (*stack, *fan_in, self.rank), w.dtype
            )
            b = jnp.zeros((*stack, self.rank, *out), w.dtype)
            if isinstance(box, nn.Partitioned):
                names = box.names
                a = dataclasses.replace(box, value=a, names=(*names[: n_stack + n_in], None))
                b = dataclasses.replace(
                    box, value=b, names=(*names[:n_stack], None, *names[n_stack + n_in :])
                )
            adapters[path + '/a'], adapters[path + '/b'] = a, b
        if not self._reported:
            self._reported = True
            logging.info(report(self.rank, flat, chosen, adapters))
        return unflatten(adapters)


def select_targets(targets, flat, layers) -> list[str]:
    """Sorted kernel paths matched by the target regexes; each regex must match, and only
    Dense / Linear kernels (paths in `layers`)."""
    chosen = set()
    for pattern in targets:
        hits = [p for p in flat if re.fullmatch(pattern, p)]
        if not hits:
            raise ConfigError(
                f'lora.targets pattern {pattern!r} matches no parameter (Dense/Linear '
                f'kernels here: {", ".join(sorted(layers)[:4])}, ...)'
            )
        for p in hits:
            if p not in layers:
                raise ConfigError(
                    f'lora.targets pattern {pattern!r} matches {p}, which is not the kernel '
                    'of a Dense/Linear layer; narrow the pattern'
                )
        chosen.update(hits)
    return sorted(chosen)


def report(rank, flat, chosen, adapters) -> str:
    size = lambda x: int(np.prod(nn.unbox(x).shape))  # noqa: E731
    n_base = sum(size(v) for v in flat.values())
    n_targets = sum(size(flat[p]) for p in chosen)
    n_lora = sum(size(v) for v in adapters.values())
    return (
        f'lora: rank {rank} on {len(chosen)} kernels ({n_targets:,} parameters): '
        f'{n_lora:,} adapter parameters = {n_lora / n_targets:.2%} of those kernels, '
        f'{n_lora / n_base:.2%} of the {n_base:,} model parameters'
    )


def _record_dense_kernels(layers: dict):
    """A linen interceptor filling {kernel path: (contracted input dims, kernel ndim per
    call)} for every Dense / DenseGeneral / Linear-with-`contract` call during init (an
    MoE's expert kernels: per expert, their `stacked` leading dims not counted)."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if (
            context.method_name == '__call__'
            and module.scope is not None
            and module.has_variable('params', 'kernel')
        ):
            n_in = _contracted_dims(module)
            if n_in is not None:
                kernel = nn.unbox(module.get_variable('params', 'kernel'))
                per_call = kernel.ndim - getattr(module, 'stacked', 0)  # MoE: per expert
                layers['/'.join((*module.scope.path, 'kernel'))] = (n_in, per_call)
        return out

    return interceptor


def _contracted_dims(module) -> int | None:
    contract = getattr(module, 'contract', None)
    if isinstance(contract, int):  # jaxbig.models.layers.Linear (gpt, vit)
        return contract
    if isinstance(module, nn.DenseGeneral):
        axis = module.axis
        return len(axis) if isinstance(axis, (tuple, list)) else 1
    if isinstance(module, nn.Dense):
        return 1
    return None
