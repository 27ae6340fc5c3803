"""LSTM language model: the classic autoregressive model, trained by the same loss and loop.

    tokens    int32 [batch, seq]
    embed     nn.Embed(vocab -> embed_dim)                          [batch, seq, embed]
    layers    num_layers x LSTM (nn.OptimizedLSTMCell scanned over time with nn.scan;
              dropout between layers)                               [batch, seq, hidden]
    logits    Dense(hidden -> vocab), named 'head'                  [batch, seq, vocab]

Generation: the recurrent state is the cache (`init_cache`, `Model.decode`), the same
interface as the GPT's KV cache. `decode` runs the very same scanned cells from a given
state, so the full-sequence forward is `decode` from the zero state. Positions < 0 mark
padding: the state passes through such a step unchanged (left-padded batches).

Logical axes (parallel.DEFAULT_RULES maps them to mesh axes): embedding ('vocab', 'embed');
cell kernels, input and recurrent, ('lstm_in', 'lstm_hidden') [in, hidden] per gate, biases
('lstm_hidden',); head kernel ('embed', 'vocab'), bias ('vocab',). So fsdp splits every
kernel along its input dimension and tensor splits the hidden units (gates).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import default_embed_init

KERNEL_AXES = ('lstm_in', 'lstm_hidden')


class Recurrence(nn.Module):
    """One LSTM layer over time: carry (c, h) [batch, hidden] each; xs = (x [batch, seq, in],
    valid bool [batch, seq]) -> (carry, hs [batch, seq, hidden])."""

    hidden_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, xs):
        def step(cell, carry, inputs):
            x, valid = inputs
            new, y = cell(carry, x)
            new = jax.tree.map(lambda n, o: jnp.where(valid[:, None], n, o), new, carry)
            return new, y

        scan = nn.scan(
            step,
            variable_broadcast='params',
            split_rngs={'params': False},
            in_axes=1,
            out_axes=1,
        )
        part = nn.with_logical_partitioning
        cell = nn.OptimizedLSTMCell(  # flax's default initialisers, with logical axes
            self.hidden_dim,
            kernel_init=part(nn.initializers.lecun_normal(), KERNEL_AXES),
            recurrent_kernel_init=part(nn.initializers.orthogonal(), KERNEL_AXES),
            bias_init=part(nn.initializers.zeros_init(), ('lstm_hidden',)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='cell',
        )
        return scan(cell, carry, xs)


class Model(nn.Module):
    """LSTM LM: tokens int32 [batch, seq] -> logits [batch, seq, vocab]."""

    vocab_size: int = 256
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    def setup(self):
        dtypes = dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))
        part = nn.with_logical_partitioning
        self.embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=part(default_embed_init, ('vocab', 'embed')),
            **dtypes,
        )
        self.layers = [Recurrence(self.hidden_dim, **dtypes) for _ in range(self.num_layers)]
        self.drop = nn.Dropout(self.dropout)
        self.head = nn.Dense(
            self.vocab_size,
            kernel_init=part(nn.initializers.lecun_normal(), ('embed', 'vocab')),
            bias_init=part(nn.initializers.zeros_init(), ('vocab',)),
            **dtypes,
        )

    def _run(self, tokens, valid, cache, train):
        x = self.embed(tokens)
        cs, hs = [], []
        for i, layer in enumerate(self.layers):
            x = self.drop(x, deterministic=not train)
            (c, h), x = layer((cache['c'][i], cache['h'][i]), (x, valid))
            cs.append(c)
            hs.append(h)
        x = self.drop(x, deterministic=not train)
        return self.head(x), dict(c=jnp.stack(cs), h=jnp.stack(hs))

    def __call__(self, tokens, *, train: bool = False):
        """tokens int32 [batch, seq] -> logits [batch, seq, vocab] (from the zero state)."""
        cache = init_cache(self, tokens.shape[0], 0)
        valid = jnp.ones(tokens.shape, bool)
        return self._run(tokens, valid, cache, train)[0]

    def decode(self, tokens, positions, cache):
        """tokens, positions int32 [batch, t] (position -1 = padding, state unchanged);
        cache = the state from `init_cache` -> (logits [batch, t, vocab], new state)."""
        return self._run(tokens, positions >= 0, cache, False)


def init_cache(model: Model, batch: int, max_len: int):
    """The zero recurrent state: c, h float [num_layers, batch, hidden] (max_len unused)."""
    del max_len
    shape = (model.num_layers, batch, model.hidden_dim)
    return dict(c=jnp.zeros(shape, model.dtype), h=jnp.zeros(shape, model.dtype))
