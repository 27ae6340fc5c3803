"""The one aggregation rule: sums and counts travel, division happens once.

A loss reports every number as a `Mean(total, count)` (a sum over what it counts and how
many things it counted: target tokens, examples, views) or a `Sum(total)` (a count worth
logging as it is). The train step adds them over micro-batches (`grad_accum_steps`),
devices (pmap's `psum`) and — under jit on a global batch — processes, and divides once:

    loss     = sum of per-target NLL over the whole update / number of valid targets
    gradient = d(summed loss) / d(params) / the same number of valid targets

so a micro-batch or device holding 1 valid target weighs 1/17 of one holding 16, not 1/2.
Evaluators add the Means of their batches and divide once at the end: `val/loss` is
token-weighted, never a mean of per-batch means.

Both are pytrees (they go through `jax.jit`, `lax.scan`, `lax.psum` and `jax.tree.map`
like arrays): adding two Means adds their totals and their counts.
"""

from __future__ import annotations

import operator

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Mean:
    """A running mean: `total` (sum of the counted values) over `count` (how many)."""

    total: jax.Array
    count: jax.Array

    def value(self):
        """total / count, or 0 where nothing was counted."""
        count = jnp.asarray(self.count, jnp.float32)
        return jnp.where(count > 0, self.total / jnp.where(count > 0, count, 1.0), 0.0)

    def __float__(self):  # on the host: float(m), np.asarray(m) read the value
        return float(self.value())

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value(), dtype)


@flax.struct.dataclass
class Sum:
    """A quantity that is added, never divided (a count of targets, examples, bytes)."""

    total: jax.Array

    def value(self):
        return self.total

    def __float__(self):
        return float(self.total)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.total, dtype)


@flax.struct.dataclass
class ExpMean:
    """exp of a running mean (perplexity = exp(token-weighted mean NLL)): aggregates as a
    Mean, so it is the exp of the whole mean, never a mean of exps."""

    total: jax.Array
    count: jax.Array

    def value(self):
        return jnp.exp(Mean(self.total, self.count).value())

    def __float__(self):
        return float(self.value())

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value(), dtype)


@flax.struct.dataclass
class Imbalance:
    """How uneven a load is: `total` [..., n] sums what each of n bins received (tokens per
    expert, per layer); aggregates as a Sum (totals add), and its value is max / mean over
    the last axis, averaged over the leading ones (1.0 = perfectly even; n = all in one)."""

    total: jax.Array

    def value(self):
        total = jnp.asarray(self.total, jnp.float32)
        mean = jnp.mean(total, axis=-1)
        ratio = jnp.max(total, axis=-1) / jnp.where(mean > 0, mean, 1.0)
        return jnp.mean(jnp.where(mean > 0, ratio, 1.0))

    def __float__(self):
        return float(self.value())

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value(), dtype)


def exp_of(m: Mean) -> ExpMean:
    return ExpMean(m.total, m.count)


def mean(values, weights=None) -> Mean:
    """Mean of `values` (any shape) weighted by `weights` (broadcastable; None = all 1):
    Mean(sum(values * weights), sum(weights)) in float32."""
    values = jnp.asarray(values, jnp.float32)
    if weights is None:
        return Mean(values.sum(), jnp.float32(values.size))
    weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), values.shape)
    return Mean((values * weights).sum(), weights.sum())


def of_value(value, count) -> Mean:
    """A Mean that is `value` over `count` things: for objectives computed on the whole
    (global) batch at once, such as a contrastive loss over all of its views."""
    count = jnp.asarray(count, jnp.float32)
    return Mean(jnp.asarray(value, jnp.float32) * count, count)


def constant(value) -> Mean:
    """A number that is the same in every micro-batch and on every device (a temperature, a
    learned logit scale): it aggregates to itself."""
    return Mean(jnp.asarray(value, jnp.float32), jnp.float32(1.0))


def _is_aggregate(x) -> bool:
    return isinstance(x, (Mean, ExpMean, Sum, Imbalance))


def check(metrics: dict, where: str) -> None:
    """Raises TypeError naming the first entry of `metrics` that is neither Mean nor Sum."""
    for k, v in metrics.items():
        if not _is_aggregate(v):
            raise TypeError(f'{where}: metric {k!r} is a {type(v).__name__}; a loss reports '
                            'every metric as jaxbig.aggregate.Mean, ExpMean, Sum or Imbalance '
                            '(sums and counts, divided once by the step)')


def values(tree):
    """Every Mean / Sum in `tree` replaced by its value (jax or numpy, as given)."""
    return jax.tree.map(lambda m: m.value(), tree, is_leaf=_is_aggregate)


def host_values(tree) -> dict:
    """`values` on the host, as Python floats (for logs)."""
    def one(m):
        if isinstance(m, Imbalance):
            return float(m.value())
        if isinstance(m, Sum):
            return float(np.asarray(m.total, np.float64))
        total, count = np.asarray(m.total, np.float64), np.asarray(m.count, np.float64)
        value = float(total / count) if count > 0 else 0.0
        return float(np.exp(value)) if isinstance(m, ExpMean) else value

    return jax.tree.map(one, jax.device_get(tree), is_leaf=_is_aggregate)


def add(a, b):
    """Elementwise sum of two trees of Means / Sums / arrays, numpy or jax (None = zero)."""
    if a is None:
        return b
    return jax.tree.map(operator.add, a, b)


def example_mask(batch, rows: int | None = None):
    """float32 [rows]: 1 for a real example, 0 for a padding row of an evaluator's last
    batch (`batch['example_mask']`, set by one-pass pipelines); all ones when absent."""
    if 'example_mask' in batch:
        return jnp.asarray(batch['example_mask'], jnp.float32)
    if rows is None:
        rows = jax.tree.leaves(batch)[0].shape[0]
    return jnp.ones((rows,), jnp.float32)
