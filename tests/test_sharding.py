"""Sharding really splits: per-device bytes of parameters and optimizer state under fsdp=8
(GPT, LSTM, ResNet) and tensor=8 (GPT attention heads and MLP width); every parameter has
logical names with a rule; dimensions a mesh axis does not divide stay whole."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from conftest import REPO
from jaxbig import models, parallel

# name -> (model name, fields, example input)
MODELS = {
    'gpt': ('gpt', dict(vocab_size=256, num_layers=2, num_heads=8, embed_dim=256, mlp_dim=512),
            ('tokens', (1, 8))),
    'lstm': ('lstm', dict(vocab_size=256, embed_dim=64, hidden_dim=128, num_layers=1),
             ('tokens', (1, 8))),
    'cnn': ('resnet', dict(variant='cnn', width=16, cnn_layers=2, num_classes=16),
            ('image', (1, 8, 8, 3))),
    'resnet18': ('resnet', dict(variant='resnet18', width=8, num_classes=16),
                 ('image', (1, 8, 8, 3))),
    'mlp': ('mlp', dict(hidden_dims=(64,), out_dim=32), ('vector', (1, 16))),
}


def example(kind, shape):
    return jnp.zeros(shape, jnp.int32 if kind == 'tokens' else jnp.float32)


# For each (model, mesh): the train state initialised with train.py's sharding code; prints
# {case: {'params': total per-device bytes, 'opt': ..., 'leaves': {path: [global, device]}}}.
SCRIPT = r'''
import json, sys
import flax.linen as nn, jax, ml_collections, numpy as np
sys.path.insert(0, 'tests')
from test_sharding import MODELS, example
from jaxbig import defaults, models, optim, parallel, step as step_lib

tx, _ = optim.build_optimizer(ml_collections.ConfigDict(defaults.optimizer(
    name='adamw', lr=1e-3, schedule='constant', clip_norm=0.0, min_lr_ratio=0.0)), 10)
out = {}
for case in sys.argv[1:]:
    name, mesh_name, how = case.split(':')
    model_name, fields, (kind, shape) = MODELS[name]
    model = models.get_model(model_name, **fields)
    inputs = (example(kind, shape),)
    mesh = parallel.make_mesh(ml_collections.ConfigDict({mesh_name: 8}))
    rules = parallel.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = step_lib.init_fn(model, tx, inputs, 0)
        abstract = jax.eval_shape(init)
        boxed = jax.eval_shape(step_lib.init_fn(model, tx, inputs, 0, boxed=True))
        logical = parallel.state_logical_specs(abstract, nn.get_partition_spec(boxed))
        shardings = parallel.logical_to_shardings(logical, mesh, rules)
        if how == 'init':  # as train.py does
            state = jax.jit(init, out_shardings=shardings)()
        else:  # zeros put with the same shardings: no compile
            state = jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
                                 abstract, shardings)
    leaves = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        per_device = max(s.data.nbytes for s in x.addressable_shards)
        leaves['/'.join(parallel._path_key(path))] = [x.nbytes, per_device]
    out[case] = dict(params=parallel.bytes_per_device(state.params),
                     opt=parallel.bytes_per_device(state.opt_state), leaves=leaves)
print(json.dumps(out))
'''

CASES = ['gpt:data:init', 'gpt:fsdp:init', 'gpt:tensor:zeros', 'lstm:fsdp:zeros',
         'cnn:fsdp:zeros', 'resnet18:fsdp:zeros']


@pytest.fixture(scope='module')
def sharded():
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', SCRIPT, *CASES], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fsdp8_param_and_optimizer_bytes_are_an_eighth(sharded):
    rep, fsdp = sharded['gpt:data:init'], sharded['gpt:fsdp:init']
    # Norm scales (embed,) are split too; nothing is left replicated but scalars.
    assert abs(fsdp['params'] - rep['params'] / 8) <= 0.02 * rep['params'] / 8, (rep, fsdp)
    assert abs(fsdp['opt'] - rep['opt'] / 8) <= 0.02 * rep['opt'] / 8 + 64, (rep, fsdp)


@pytest.mark.parametrize('case', ['lstm:fsdp:zeros', 'cnn:fsdp:zeros', 'resnet18:fsdp:zeros'])
def test_fsdp8_shards_lstm_and_resnet(sharded, case):
    """Kernels, embeddings and GroupNorm vectors split 8 ways; only biases stay whole."""
    fsdp = sharded[case]
    leaves = fsdp['leaves']
    for path, (whole, per_device) in leaves.items():
        if path.endswith(('kernel', 'embedding')) or 'norm' in path:
            assert per_device * 8 == whole, (path, whole, per_device)
    # left whole: the LSTM's gate biases [hidden] (tensor splits them, not fsdp) and the
    # heads' biases [vocab]
    whole = {p: g for p, (g, d) in leaves.items() if d == g}
    assert all(p.endswith('bias') for p in whole), whole
    replicated = sum(g for g, _ in leaves.values())
    assert sum(whole.values()) < 0.02 * replicated, whole
    assert fsdp['params'] == (replicated - sum(whole.values())) / 8 + sum(whole.values())
    # adam's two moments per parameter, split alike (+ scalar counts)
    assert abs(fsdp['opt'] - 2 * fsdp['params']) <= 64, fsdp


def test_tensor8_splits_heads_and_mlp(sharded):
    tensor, rep = sharded['gpt:tensor:zeros'], sharded['gpt:data:init']
    leaves = tensor['leaves']
    attention = [p for p in leaves if '/attn/' in f'/{p}/' and p.endswith('kernel')]
    mlp = [p for p in leaves if '/mlp/' in f'/{p}/' and p.endswith('kernel')]
    assert {p.split('/')[-2] for p in attention} == {'query', 'key', 'value', 'out'}, sorted(leaves)
    assert {p.split('/')[-2] for p in mlp} == {'gate', 'up', 'down'}, sorted(leaves)
    for path in [*attention, *mlp, 'embed/embedding']:
        whole, per_device = leaves[path]
        assert per_device * 8 == whole, (path, whole, per_device)
    for path in [p for p in leaves if p.endswith('scale')]:  # norms: (embed,) -> fsdp=1
        assert leaves[path][0] == leaves[path][1], path
    norm_bytes = sum(g for p, (g, _) in leaves.items() if p.endswith('scale'))
    expected = (rep['params'] - norm_bytes) / 8 + norm_bytes
    assert tensor['params'] == expected, (tensor['params'], expected)
    assert abs(tensor['opt'] - 2 * tensor['params']) <= 64, tensor['opt']


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_parameter_has_ruled_logical_names(name):
    model_name, fields, (kind, shape) = MODELS[name]
    model = models.get_model(model_name, **fields)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example(kind, shape)))
    ruled = {n for n, _ in parallel.DEFAULT_RULES}
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    unnamed = [path for path, x in leaves if not isinstance(x, nn.Partitioned)]
    assert not unnamed, unnamed
    unruled = {n for _, x in leaves for n in x.names if n is not None} - ruled
    assert not unruled, unruled


def test_fit_spec_replicates_dimensions_a_mesh_axis_does_not_divide():
    mesh = {'data': 2, 'fsdp': 2, 'tensor': 2}
    rules = parallel.DEFAULT_RULES
    # a 25-word vocabulary under tensor=2 stays whole; embed still splits over fsdp
    assert parallel.fit_spec(P('vocab', 'embed'), (25, 16), mesh, rules) == P(None, 'embed')
    assert parallel.fit_spec(P('vocab', 'embed'), (26, 16), mesh, rules) == P('vocab', 'embed')
    assert parallel.fit_spec(P('embed',), (3,), mesh, rules) == P(None)
    # batch -> (data, fsdp): needs a multiple of 4
    assert parallel.fit_spec(P('batch', 'mlp'), (6, 4), mesh, rules) == P(None, 'mlp')
    assert parallel.fit_spec(P(), (5, 5), mesh, rules) == P(None, None)


def test_fit_specs_on_a_tree():
    mesh = jax.sharding.AbstractMesh((2, 2, 1, 2), parallel.AXES)
    specs = {'a': P('vocab', 'embed'), 'b': P('mlp')}
    shapes = {'a': jax.ShapeDtypeStruct((25, 16), jnp.float32),
              'b': jax.ShapeDtypeStruct((8,), jnp.float32)}
    assert parallel.fit_specs(specs, shapes, mesh, parallel.DEFAULT_RULES) == {
        'a': P(None, 'embed'), 'b': P('mlp')}


def test_micro_batches_must_split_over_the_data_parallel_devices():
    from types import SimpleNamespace

    from jaxbig import parallel
    from jaxbig.config import ConfigError

    mesh = SimpleNamespace(shape={'data': 2, 'fsdp': 2, 'tensor': 1})
    assert parallel.micro_batch_rows(16, 4, mesh) == 4
    with pytest.raises(ConfigError, match=r'= 2 rows per micro-batch, not divisible by the '
                       r'data-parallel size data\*fsdp=4; choose a batch_size divisible by 16'
                       ) as e:
        parallel.micro_batch_rows(8, 4, mesh)
    assert '\n' not in str(e.value)
