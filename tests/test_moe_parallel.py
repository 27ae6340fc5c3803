"""Expert parallelism on 8 CPU devices: a MoE GPT's train step on meshes with an 'expert'
axis (data=2 x expert=4, fsdp=2 x expert=4) equals the single-device step (two updates,
uneven masks), its expert kernels really split, and the capacity dispatch moves tokens to
the experts with all-to-alls instead of gathering the experts' weights (dropless gathers
them: each device runs its own rows through every expert)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, xla_flags

SCRIPT = r'''
import json, re, sys
import flax.linen as nn, jax, jax.numpy as jnp, ml_collections, numpy as np, optax
from jaxbig import defaults, losses, models, parallel, step as step_lib
from jaxbig.finetune import flatten

loss_cfg = ml_collections.ConfigDict(defaults.lm_loss())
loss_fn = losses.get_loss_module('autoregressive').loss_fn
tx = optax.sgd(0.1)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 64, (8, 17)).astype(np.int32)
valid = np.array([16, 3, 9, 16, 1, 12, 16, 7])
batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
             mask=(np.arange(16)[None] < valid[:, None]).astype(np.float32))
MESHES = {'single': None, 'data2_expert4': dict(data=2, expert=4),
          'fsdp2_expert4': dict(fsdp=2, expert=4)}
out = {}
meshes = sys.argv[1].split(',')  # beside 'single', the reference
for dispatch in sys.argv[2:]:
    model = models.get_model('gpt', vocab_size=64, num_layers=2, num_heads=2, embed_dim=32,
                             mlp_dim=32, moe=dict(experts=8, experts_per_token=2,
                                                  dispatch=dispatch, capacity_factor=2.0))
    step = step_lib.make_train_step(model, loss_fn, loss_cfg, tx)
    ref = None
    for name, mesh_cfg in ((m, MESHES[m]) for m in ['single', *meshes]):
        devices = jax.devices()[:1] if mesh_cfg is None else jax.devices()
        mesh = parallel.make_mesh(ml_collections.ConfigDict(mesh_cfg or dict(data=1)), devices)
        rules = parallel.DEFAULT_RULES
        example = (batch['inputs'][:1],)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            init = step_lib.init_fn(model, tx, example, 0)
            abstract = jax.eval_shape(init)
            boxed = jax.eval_shape(step_lib.init_fn(model, tx, example, 0, boxed=True))
            logical = parallel.state_logical_specs(abstract, nn.get_partition_spec(boxed))
            shardings = parallel.logical_to_shardings(logical, mesh, rules)
            state = jax.jit(init, out_shardings=shardings)()
            bs = parallel.batch_sharding(mesh)
            f = step_lib.jit_train_step(step, shardings, bs)
            b = jax.device_put(batch, bs)
            text = f.lower(state, b).compile().as_text()
            losses_seen = []
            for _ in range(2):
                state, m = f(state, b)
                losses_seen.append(float(m['total_loss']))
        gate = [x for p, x in flatten(state.params).items() if p.endswith('experts/gate/kernel')][0]
        params = {p: np.asarray(x) for p, x in flatten(jax.device_get(state.params)).items()}
        if ref is None:
            ref = (losses_seen, params)
        out[f'{dispatch}:{name}'] = dict(
            loss=losses_seen, loss_diff=max(abs(a - b) for a, b in zip(losses_seen, ref[0])),
            param_diff=max(float(np.abs(params[p] - ref[1][p]).max()) for p in params),
            expert_shard=gate.nbytes // max(s.data.nbytes for s in gate.addressable_shards),
            gathers_expert_kernels=any(g.endswith('8,32,32') for g in re.findall(
                r'= f32\[([0-9,]*)\]\S* all-gather', text)),
            collectives={k: len(re.findall(rf'= [^=]*\b{k}(-start)?\(', text))
                         for k in ('all-to-all', 'all-gather', 'all-reduce', 'reduce-scatter',
                                   'collective-permute')})
print(json.dumps(out))'''


def _run(meshes: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', SCRIPT, meshes, 'capacity', 'dropless'],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def runs():
    """data=2 x expert=4 (default suite); fsdp=2 x expert=4 is `fsdp_runs` (slow)."""
    return _run('data2_expert4')


@pytest.fixture(scope='module')
def fsdp_runs():
    return _run('fsdp2_expert4')


def _mesh_runs(request, mesh):
    return request.getfixturevalue('runs' if mesh == 'data2_expert4' else 'fsdp_runs')


FSDP = pytest.mark.slow  # a second 8-device subprocess (~20 s)


@pytest.mark.parametrize('dispatch', ['capacity', 'dropless'])
@pytest.mark.parametrize('mesh, split', [('data2_expert4', 4),
                                         pytest.param('fsdp2_expert4', 8, marks=FSDP)])
def test_expert_sharded_step_equals_single_device(request, dispatch, mesh, split):
    runs = _mesh_runs(request, mesh)
    r = runs[f'{dispatch}:{mesh}']
    assert r['loss_diff'] < 1e-5 and r['param_diff'] < 1e-5, r
    assert r['expert_shard'] == split  # expert kernels: E over 'expert' (and d over fsdp)
    assert runs[f'{dispatch}:single']['loss'][1] < runs[f'{dispatch}:single']['loss'][0]


@pytest.mark.parametrize('mesh', ['data2_expert4', pytest.param('fsdp2_expert4', marks=FSDP)])
def test_capacity_dispatch_exchanges_tokens_by_all_to_all(request, mesh):
    """Capacity (GShard): tokens go to the experts' devices; dropless (a shard_map over the
    batch, each device sorting its own rows) gathers every expert's kernels, as FSDP does."""
    runs = _mesh_runs(request, mesh)
    assert runs[f'dropless:{mesh}']['gathers_expert_kernels']
    r = runs[f'capacity:{mesh}']
    assert r['collectives']['all-to-all'] > 0 and not r['gathers_expert_kernels'], r
