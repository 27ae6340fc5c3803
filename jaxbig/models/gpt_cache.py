"""The explicit KV cache of jaxbig's GPT (jaxbig.models.gpt.Model.decode; re-exported as
`gpt.init_cache`, where jaxbig.generate finds a model module's cache)."""

import jax.numpy as jnp


def init_cache(model, batch: int, max_len: int):
    """An empty KV cache for `Model.decode` (`model`: a gpt.Model), an explicit pytree (not
    a flax collection), every layer's (a MoE model's `dense_layers` first, then `layers`):

        k, v   [num_layers, batch, max_len, kv_heads, head_dim] in the compute dtype
        pos    int32 [batch, max_len], each slot's token position; -1 = empty or padding
        index  int32 scalar, the next slot to write
    """
    shape = (model.num_layers, batch, max_len, model.resolved_kv_heads, model.resolved_head_dim)
    dtype = jnp.dtype(model.dtype)
    return dict(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.full((batch, max_len), -1, jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )
