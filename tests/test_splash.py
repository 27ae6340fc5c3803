"""model.attention='splash' (the Pallas splash-attention kernel; Pallas's interpreter on this
CPU) against the einsum path: forward and gradients within float32 rounding for causal,
packed (segment ids), grouped-query, windowed and soft-capped attention, one GPT step the
same under either, the same on a data=2 x tensor=2 mesh (shard_map), and the refusal of a
per-layer window pattern."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbig.models import attention, splash

CASES = {  # heads, kv heads, window, softcap, packed
    'causal_mha': (4, 4, 0, 0.0, False),
    'packed_gqa': (4, 2, 0, 0.0, True),
    'window_mqa': (4, 1, 48, 0.0, False),
    'softcap_packed_window': (2, 2, 32, 5.0, True),
}


def _inputs(heads, kv, packed, b=2, t=128, d=16):
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, n, d))
               for i, n in enumerate((heads, kv, kv)))
    seg = None
    if packed:  # uneven segments, different in each row
        seg = jnp.asarray(np.stack([np.repeat([0, 1, 2], [40, 60, 28]),
                                    np.repeat([0, 1], [100, 28])]), jnp.int32)
    return q, k, v, seg


@pytest.mark.parametrize('case', sorted(CASES))
def test_splash_equals_einsum_forward_and_gradients(case):
    heads, kv, window, softcap, packed = CASES[case]
    q, k, v, seg = _inputs(heads, kv, packed)
    ref = lambda q, k, v: attention.causal_attention(q, k, v, 1, seg, window,  # noqa: E731
                                                     softcap=softcap)
    fast = lambda q, k, v: splash.splash_attention(q, k, v, seg, window,  # noqa: E731
                                                   softcap=softcap)
    np.testing.assert_allclose(jax.jit(fast)(q, k, v), ref(q, k, v), atol=2e-6)
    cot = jax.random.normal(jax.random.key(9), q.shape)
    grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), argnums=(0, 1, 2)))(q, k, v)
             for f in (fast, ref)]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_per_layer_window_is_refused():
    with pytest.raises(ValueError, match='per-layer window'):
        splash.check(jnp.int32(8))


def test_lengths_off_the_kernel_blocks_are_padded():
    """40 tokens (packed, GQA, a window): padded to 128 inside, equal to einsum."""
    q, k, v, seg = (x[:, :40] for x in _inputs(4, 2, True))
    for window in (0, 16):
        got = jax.jit(lambda q, k, v: splash.splash_attention(q, k, v, seg, window))(q, k, v)
        np.testing.assert_allclose(got, attention.causal_attention(q, k, v, 1, seg, window),
                                   atol=2e-6)


MESH_SCRIPT = """
import json
import flax.linen as nn, jax, jax.numpy as jnp, ml_collections, numpy as np
from jaxbig import parallel
from jaxbig.models import gpt
cfg = dict(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
           sliding_window=48)
tokens = jax.random.randint(jax.random.key(0), (4, 128), 0, 64)
seg = jnp.asarray(np.repeat([[0, 1]], 4, 0).repeat(64, 1), jnp.int32)
out = {}
for mesh_cfg in ({'data': 1}, {'data': 2, 'tensor': 2}):
    mesh = parallel.make_mesh(ml_collections.ConfigDict(mesh_cfg), jax.devices()[:4]
                              if len(mesh_cfg) > 1 else jax.devices()[:1])
    rules = parallel.rules_from_config(ml_collections.ConfigDict({}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for impl in ('einsum', 'splash'):
            model = gpt.Model(**cfg, attention=impl)
            params = model.init(jax.random.key(1), tokens)['params']
            loss = lambda p: jnp.mean(model.apply({'params': p}, tokens, segment_ids=seg) ** 2)
            value, grads = jax.jit(jax.value_and_grad(loss))(params)
            out[f'{len(mesh_cfg)}-{impl}'] = [float(value)] + [
                float(jnp.sum(g * g)) for g in jax.tree.leaves(grads)]
print(json.dumps(out))
"""


def test_gpt_with_splash_equals_einsum_on_one_device_and_a_mesh():
    """A GPT (GQA, a window, packed rows) under attention='splash' gives the einsum path's
    loss and gradients, on one device and on data=2 x tensor=2 (the kernel in shard_map)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO, xla_flags

    proc = subprocess.run([sys.executable, '-c', MESH_SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for devices in ('1', '2'):
        np.testing.assert_allclose(out[f'{devices}-splash'], out[f'{devices}-einsum'], rtol=2e-5)
    np.testing.assert_allclose(out['2-splash'], out['1-einsum'], rtol=2e-5)


def test_auto_is_einsum_on_cpu_and_splash_for_a_tpu_mesh():
    """'auto' follows the devices the step is traced for: einsum here; splash when traced
    under a TPU mesh (`jaxbig plan` for a v5p target; needs libtpu)."""
    assert splash.auto(128, 0, jnp.bfloat16) == 'einsum'
    libtpu = pytest.importorskip('libtpu')
    del libtpu
    from jaxbig.planning import targets

    devices, _ = targets.devices_for(targets.parse('v5p-8'))
    mesh = jax.sharding.Mesh(np.array(devices[:1]), ('data',))
    seen = []
    with jax.set_mesh(mesh):
        jax.jit(lambda x: seen.append(splash.auto(128, 0, jnp.bfloat16)) or x).lower(
            jax.ShapeDtypeStruct((1,), jnp.float32))
    assert seen == ['splash']
    assert splash.auto(96, 0, jnp.bfloat16) == 'einsum'  # not a multiple of 128
