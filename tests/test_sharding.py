"""FSDP really shards: per-device parameter bytes under fsdp=8 are ~1/8 of replicated."""
import subprocess
import sys

SCRIPT = r'''
import flax.linen as nn, jax, ml_collections
from jaxbig import models, optim, parallel, step as step_lib
import jax.numpy as jnp
model = models.get_model('gpt', vocab_size=256, num_layers=2, num_heads=8, embed_dim=256,
                         mlp_dim=512)
tx, _ = optim.build_optimizer(ml_collections.ConfigDict(dict(name='adamw', lr=1e-3)), 10)
example = (jnp.zeros((1, 8), jnp.int32),)
out = {}
for name, sizes in (('replicated', dict(data=8)), ('fsdp', dict(fsdp=8))):
    mesh = parallel.make_mesh(ml_collections.ConfigDict(sizes))
    rules = parallel.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = step_lib.init_fn(model, tx, example, 0)
        abstract = jax.eval_shape(init)
        boxed = jax.eval_shape(step_lib.init_fn(model, tx, example, 0, boxed=True))
        logical = parallel.state_logical_specs(abstract, nn.get_partition_spec(boxed))
        state = jax.jit(init, out_shardings=parallel.logical_to_shardings(logical, mesh, rules))()
        out[name] = (parallel.bytes_per_device(state.params),
                     parallel.bytes_per_device(state.opt_state))
print(out['replicated'][0], out['fsdp'][0], out['replicated'][1], out['fsdp'][1])
'''


def test_fsdp8_param_and_optimizer_bytes_are_an_eighth():
    env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu',
           'PATH': '/usr/bin:/bin'}
    proc = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep_p, fsdp_p, rep_o, fsdp_o = map(int, proc.stdout.split()[-4:])
    # Norm scales (embed,) are split too; nothing is left replicated but scalars.
    assert abs(fsdp_p - rep_p / 8) <= 0.02 * rep_p / 8, (rep_p, fsdp_p)
    assert abs(fsdp_o - rep_o / 8) <= 0.02 * rep_o / 8 + 64, (rep_o, fsdp_o)
