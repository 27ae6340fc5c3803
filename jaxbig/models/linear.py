"""A linear head on precomputed features: inputs float32[B, E] -> outputs [B, num_classes].
Used by `features` fine-tuning (the frozen backbone's embeddings are computed once)."""
import flax.linen as nn
import jax.numpy as jnp


class Model(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        del train
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(
            inputs.astype(jnp.float32))
