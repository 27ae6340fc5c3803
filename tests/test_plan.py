"""`jaxbig plan`: the train step compiled ahead of time for a target mesh (jaxbig.planning).

Per-device parameter and optimizer bytes are checked against the shares the mesh implies,
computed here from the model's parameter count; the collective counter against a program
whose collectives are known; every task's experiment plans; bad input exits with one line.
"""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO, run_cli
from jaxbig.models import gpt
from jaxbig.planning import estimate, hlo, targets

SMALL = ['--config.train.batch_size=8', '--config.data.seq_len=128']


def _plan(tmp_path, *args, devices=8, check=True):
    proc = run_cli('plan', '--json', *args, devices=devices, check=check)
    return proc, (json.loads(proc.stdout) if proc.returncode in (0, 1) else None)


def _llama_1b_bytes():
    """float32 parameter bytes of experiments/llm.py:size=1b, counted from the module."""
    model = gpt.Model(vocab_size=128256, tie_embeddings=False, **gpt.SIZES['llama_1b'])
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 8), jnp.int32), train=False))
    return 4 * gpt.count_params(params)


@pytest.mark.parametrize('mesh,model_ways', [('fsdp=8', 8), ('tensor=2,fsdp=4', 8),
                                             ('data=8', 1)])
def test_llama_1b_shares_per_device(tfds_dir, tmp_path, mesh, model_ways):
    _, r = _plan(tmp_path, '--config', 'experiments/llm.py:size=1b', '--mesh', mesh, *SMALL)
    total = _llama_1b_bytes()
    assert r['mesh'] == {'data': 1, 'fsdp': 1, 'tensor': 1, **targets_mesh(mesh)}
    exact, ideal = r['memory']['exact'], r['memory']['ideal']
    # AdamW keeps two float32 moments per parameter (+ a few scalars)
    assert exact['params'] == pytest.approx(total / model_ways, rel=0.05)
    assert exact['params'] + exact['optimizer'] == pytest.approx(3 * total / model_ways,
                                                                 rel=0.05)
    assert ideal['params'] == pytest.approx(total / model_ways, rel=1e-6)
    # the batch (inputs / targets / mask of 8 x 128 tokens) splits data x fsdp ways
    rows_ways = 8 // targets_mesh(mesh).get('tensor', 1)
    assert ideal['batch'] == pytest.approx(exact['batch']) and exact['batch'] * rows_ways >= (
        3 * 8 * 128)
    xla = r['memory']['xla']
    assert xla['temporaries'] > 0 and xla['arguments'] >= exact['params'] + exact['optimizer']
    assert r['memory']['peak'] >= xla['arguments']
    assert r['flops']['counted'] == 'MaxText count'
    tokens = r['config']['tokens_per_step']
    assert tokens == 8 * 128
    model = gpt.Model(vocab_size=128256, tie_embeddings=False, **gpt.SIZES['llama_1b'])
    assert r['flops']['model_per_step'] == pytest.approx(gpt.flops_per_token(model, 128) * tokens)
    assert r['fits'] is None and r['estimate']['step_s'] is None  # cpu:8: no capacity/peak
    if mesh != 'data=8':  # parameters are gathered for the layers: all-gathers in every layer
        assert r['collectives']['all-gather']['count'] >= 2 * 16


def targets_mesh(text):
    return {k: int(v) for k, v in (p.split('=') for p in text.split(','))}


def test_70b_on_v5e_8_does_not_fit_and_names_the_largest_term(tfds_dir, tmp_path):
    proc, r = _plan(tmp_path, '--config', 'experiments/llm.py:size=70b', '--target', 'v5e-8',
                    '--mesh', 'fsdp=8', *SMALL, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert r['fits'] is False and r['target']['hbm_bytes'] == 16e9
    # 70.6 B float32 parameters: 35 GB per device, AdamW's moments twice that
    assert r['memory']['exact']['params'] == pytest.approx(70.55e9 * 4 / 8, rel=0.01)
    assert r['largest_term'] == 'optimizer'
    assert any('mu_dtype=bfloat16' in hint for hint in r['advice'])
    table = run_cli('plan', '--config', 'experiments/llm.py:size=70b', '--target', 'v5e-8',
                    '--mesh', 'fsdp=8', *SMALL, devices=8, check=False)
    assert table.returncode == 1
    assert 'DOES NOT FIT' in table.stdout and 'largest term: optimizer' in table.stdout


def test_step_time_from_the_published_peak(tfds_dir, tmp_path):
    _, r = _plan(tmp_path, '--config', 'experiments/lm.py', '--target', 'h100x8', '--mfu', '0.5',
                 '--mesh', 'data=8', '--config.train.batch_size=16')
    t, f, e = r['target'], r['flops'], r['estimate']
    assert t['peak_flops'] == 989e12 and r['fits'] is True and 0 < r['headroom'] < 1
    assert e['step_s'] == pytest.approx(f['model_per_device'] / (989e12 * 0.5))
    assert e['tokens_per_s'] == pytest.approx(r['config']['tokens_per_step'] / e['step_s'])
    assert 'standing in for h100x8' in t['compiled_for']


# Every task's experiment plans (one process, 8 devices, one plan per config).
TASKS = {
    'lm': ('experiments/lm.py', []),
    'lstm_lm': ('experiments/lstm_lm.py', []),
    'simclr': ('experiments/simclr.py:backbone=cnn,width=8,batch=16', []),
    'clip': ('experiments/clip.py:width=16,embed=16,batch=16',
             ['--config.data.resolution=16', '--config.data.num_train=2000',
              '--config.data.num_test=500']),
    'finetune_full': ('experiments/finetune_image.py:mode=full,batch=16', []),
    'finetune_probe': ('experiments/finetune_image.py:mode=linear_probe,batch=16', []),
}
DRIVER = """
import json, sys
from jaxbig import cli, planning
out = {}
for name, (spec, extra) in json.loads(sys.argv[1]).items():
    r = planning.plan(cli.load_config(spec, extra), 'cpu:8', {'data': 8})
    out[name] = r
print(json.dumps(out))
"""


def test_every_task_plans(tmp_path):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu', TFDS_DATA_DIR=str(tmp_path / 'tfds'))
    proc = subprocess.run([sys.executable, '-c', DRIVER, json.dumps(TASKS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in plans.items():
        assert r['memory']['exact']['params'] > 0, name
        assert r['memory']['xla']['temporaries'] > 0, name
        assert r['flops']['model_per_step'] > 0, name
    full, probe = plans['finetune_full'], plans['finetune_probe']
    # a linear probe's frozen backbone keeps no optimizer state
    assert probe['memory']['exact']['optimizer'] < full['memory']['exact']['optimizer'] / 10
    assert plans['simclr']['flops']['counted'] == '3 x XLA forward'


SCAN_PROGRAM = """
import json, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxbig.planning import hlo
mesh = jax.make_mesh((8,), ('fsdp',))
def loss(w, x):
    h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)
    return (h ** 2).mean()
ws, xs = NamedSharding(mesh, P(None, 'fsdp')), NamedSharding(mesh, P('fsdp'))
f = jax.jit(jax.grad(loss), in_shardings=(ws, xs))
c = f.lower(jax.ShapeDtypeStruct((6, 256, 256), jnp.float32),
            jax.ShapeDtypeStruct((64, 256), jnp.float32)).compile()
print(json.dumps(hlo.collectives(c.as_text())))
"""


def test_collectives_count_loop_iterations():
    """Six scanned layers with FSDP-sharded weights: each layer's weight is gathered in the
    forward and again in the backward pass (12 x 256 x 256 float32 in all)."""
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', SCAN_PROGRAM], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = json.loads(proc.stdout)
    assert c['all-gather'] == {'count': 12, 'bytes': 12 * 256 * 256 * 4}
    assert c['unknown_trip_loops'] == 0


TPU_STYLE_HLO = """\
HloModule m

%cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]) parameter(0)
  %c = s32[]{:T(128)} constant(5)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p.1: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p.1 = (s32[], f32[4]) parameter(0)
  %x = f32[4] get-tuple-element(%p.1), index=1
  %ag = bf16[16,8]{1,0} all-gather(%x), dimensions={0}
  %ars = (f32[4], f32[4]) all-reduce-start(%x, %x), to_apply=%add
  %ard = (f32[4], f32[4]) all-reduce-done(%ars)
  ROOT %t = (s32[], f32[4]) tuple(%i, %x)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4] parameter(0)
  %w = (s32[], f32[4]) while(%t0), condition=%cond, body=%body
  %rs = f32[2]{0} reduce-scatter(%a), dimensions={0}
  ROOT %r = f32[4] get-tuple-element(%w), index=1
}
"""


def test_collectives_parser_on_tpu_style_loops():
    """No known_trip_count (the TPU compiler's loops): the bound of `i < constant(5)`."""
    c = hlo.collectives(TPU_STYLE_HLO)
    assert c['all-gather'] == {'count': 5, 'bytes': 5 * 16 * 8 * 2}
    assert c['all-reduce'] == {'count': 5, 'bytes': 5 * 2 * 4 * 4}  # start counted, done not
    assert c['reduce-scatter'] == {'count': 1, 'bytes': 8}
    assert c['unknown_trip_loops'] == 0


def test_targets_and_advice():
    t = targets.parse('v5p-256')
    assert (t.num_devices, t.topology, t.hbm_bytes) == (128, 'v5p:4x4x8', 95e9)
    assert targets.parse('v6e-64').topology == 'v6e:8x8'
    assert targets.parse('h200x8').chip.hbm_bytes == 141e9
    largest, hints = estimate.advice(dict(params=1, optimizer=5, batch=0, temporaries=3),
                                     dict(mu_dtype='bfloat16'))
    assert largest == 'optimizer' and not any('mu_dtype' in h for h in hints)
    largest, hints = estimate.advice(dict(params=1, optimizer=2, batch=0, temporaries=3),
                                     dict(remat='none'))
    assert largest == 'temporaries' and any('remat=full' in h for h in hints)


@pytest.mark.parametrize('args,message', [
    (['--target', 'v5p-3'], 'v5p slices come in sizes'),
    (['--target', 'tpu9'], 'expected one of'),
    (['--mesh', 'pipeline=2'], 'expected axis=size pairs'),
    (['--mesh', 'fsdp=3'], 'needs 3 devices but 8 are available'),
    (['--mfu', '1.5'], '--mfu 1.5'),
    (['--config.model.num_layerz=2'], 'num_layerz'),
])
def test_bad_input_is_one_line(tfds_dir, args, message):
    proc = run_cli('plan', '--config', 'experiments/lm.py', *args, devices=8, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().count('\n') == 0, proc.stderr


def test_tpu_compiler_when_libtpu_is_installed(tfds_dir, tmp_path):
    """With the `tpu-plan` extra, v5p targets compile with the real TPU compiler."""
    pytest.importorskip('libtpu')
    _, r = _plan(tmp_path, '--config', 'experiments/lm.py', '--target', 'v5p-8',
                 '--mesh', 'fsdp=4', '--config.train.batch_size=8', devices=1)
    assert 'libtpu' in r['target']['compiled_for'] and r['fits'] is True
    assert r['memory']['exact']['params'] == pytest.approx(
        r['config']['num_params'] * 4 / 4, rel=0.05)


def test_sharded_bytes_matches_numpy():
    mesh = jax.make_mesh((1,), ('x',))
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('x'))
    tree = {'a': jax.ShapeDtypeStruct((6, 4), jnp.float32),
            'b': jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    assert estimate.sharded_bytes(tree, {'a': s, 'b': s}) == 6 * 4 * 4 + 3 * 2
    assert math.isclose(estimate.total_bytes(tree), 102)
