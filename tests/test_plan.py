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
from jaxbig import cli, models, planning
from jaxbig.config import ConfigError
from jaxbig.models import gpt
from jaxbig.planning import estimate, hlo, targets

SMALL = ['--config.train.batch_size=8', '--config.data.seq_len=128']


def _llama_1b_bytes():
    """float32 parameter bytes of experiments/llm.py:size=1b, counted from the module."""
    model = gpt.Model(vocab_size=128256, tie_embeddings=False, **gpt.SIZES['llama_1b'])
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 8), jnp.int32), train=False))
    return 4 * gpt.count_params(params)


def _mesh(text):
    return {'data': 1, 'fsdp': 1, 'expert': 1, 'tensor': 1,
            **{k: int(v) for k, v in (p.split('=') for p in text.split(','))}}


# Every plan but the CLI's runs in one process with 8 host devices (one import, one
# prepared corpus): (spec, overrides, target, mesh, mfu).
LLAMA_1B = ('experiments/llm.py:size=1b', SMALL, 'cpu:8')
PLANS = {
    'fsdp=8': (*LLAMA_1B, 'fsdp=8', 0.4),
    'tensor=2,fsdp=4': (*LLAMA_1B, 'tensor=2,fsdp=4', 0.4),
    'data=8': (*LLAMA_1B, 'data=8', 0.4),
    'h100': ('experiments/lm.py', ['--config.train.batch_size=16'], 'h100x8', 'data=8', 0.5),
    'uneven_micro': ('experiments/lm.py', ['--config.train.batch_size=16',
                                           '--config.optimizer.grad_accum_steps=4'],
                     'cpu:8', 'data=8', 0.4),
    # a Mixture-of-Experts GPT, experts split 4 ways, GShard's capacity dispatch
    'moe': ('experiments/lm.py:experts=4', ['--config.train.batch_size=16',
                                            '--config.model.moe.dispatch=capacity'],
            'cpu:8', 'data=2,expert=4', 0.4),
    # every task's experiment
    'lm': ('experiments/lm.py', [], 'cpu:8', 'data=8', 0.4),
    'lstm_lm': ('experiments/lstm_lm.py', [], 'cpu:8', 'data=8', 0.4),
    'simclr': ('experiments/simclr.py:backbone=cnn,width=8,batch=16', [], 'cpu:8', 'data=8', 0.4),
    'clip': ('experiments/clip.py:width=16,embed=16,batch=16',
             ['--config.data.resolution=16', '--config.data.num_train=2000',
              '--config.data.num_test=500'], 'cpu:8', 'data=8', 0.4),
    'finetune_full': ('experiments/finetune_image.py:mode=full,batch=16', [], 'cpu:8',
                      'data=8', 0.4),
    'finetune_probe': ('experiments/finetune_image.py:mode=linear_probe,batch=16', [], 'cpu:8',
                       'data=8', 0.4),
}
TASKS = ('lm', 'lstm_lm', 'simclr', 'clip', 'finetune_full', 'finetune_probe')
DRIVER = """
import json, sys
from jaxbig import cli, planning
out = {}
for name, (spec, extra, target, mesh, mfu) in json.loads(sys.argv[1]).items():
    config = cli.load_config(spec, extra)
    out[name] = planning.plan(config, target, planning.parse_mesh(mesh), mfu=mfu)
print(json.dumps(out))
"""


@pytest.fixture(scope='module')
def plans(tfds_dir, tmp_path_factory):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', DRIVER, json.dumps(PLANS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('mesh,model_ways', [('fsdp=8', 8), ('tensor=2,fsdp=4', 8),
                                             ('data=8', 1)])
@pytest.mark.slow  # the `plans` fixture: 13 real plans compiled, ~85-140 s
def test_llama_1b_shares_per_device(plans, mesh, model_ways):
    r = plans[mesh]
    total = _llama_1b_bytes()
    assert r['mesh'] == _mesh(mesh)
    exact, ideal = r['memory']['exact'], r['memory']['ideal']
    # AdamW keeps two float32 moments per parameter (+ a few scalars)
    assert exact['params'] == pytest.approx(total / model_ways, rel=0.05)
    assert exact['params'] + exact['optimizer'] == pytest.approx(3 * total / model_ways,
                                                                 rel=0.05)
    assert ideal['params'] == pytest.approx(total / model_ways, rel=1e-6)
    # the batch (inputs / targets / mask of 8 x 128 tokens) splits data x fsdp ways
    assert ideal['batch'] == pytest.approx(exact['batch'])
    assert exact['batch'] * (8 // _mesh(mesh)['tensor']) >= 3 * 8 * 128
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


def test_70b_on_v5e_8_does_not_fit_and_names_the_largest_term(tfds_dir):
    from jaxbig.commands import plan as plan_command

    proc = run_cli('plan', '--json', '--config', 'experiments/llm.py:size=70b',
                   '--target', 'v5e-8', '--mesh', 'fsdp=8', *SMALL, devices=8, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r['fits'] is False and r['state_fits'] is False and r['target']['hbm_bytes'] == 16e9
    # 70.6 B float32 parameters: 35 GB per device, AdamW's moments twice that
    assert r['memory']['exact']['params'] == pytest.approx(70.55e9 * 4 / 8, rel=0.01)
    # the largest of the terms (the optimizer's 70.6 GB on jax 0.10; XLA:CPU 0.12's
    # temporaries for this stand-in are larger still); the state's knobs come first whatever
    # it is, since parameters + optimizer state alone exceed the 16 GB
    mem = r['memory']
    terms = dict(params=mem['exact']['params'], optimizer=mem['exact']['optimizer'],
                 batch=mem['exact']['batch'], temporaries=mem['xla']['temporaries'])
    assert r['largest_term'] == max(terms, key=terms.get)
    assert r['advice'][0].startswith('optimizer.mu_dtype=bfloat16')
    table = plan_command.table(r)
    assert 'DOES NOT FIT' in table and f"largest term: {r['largest_term']}" in table
    assert 'try: optimizer.mu_dtype=bfloat16' in table
    assert 'parameters + optimizer state alone need 105.8 GB per device' in table
    # the floor for parameter traffic: bf16 gathers for forward and backward, one gradient
    # reduce-scatter, each 7/8 of the 141 GB of bfloat16 weights; no data axis
    m, bf16 = r['collectives_minimum'], 70.55e9 * 2
    assert m['gather'] == pytest.approx(2 * bf16 * 7 / 8, rel=0.01)
    assert m['reduce_scatter'] == pytest.approx(bf16 * 7 / 8, rel=0.01)
    assert m['data_all_reduce'] == 0 and m['ratio'] > 0
    assert 'least the parameters need: gathers' in table


@pytest.mark.slow  # the `plans` fixture: 13 real plans compiled, ~85-140 s
def test_step_time_from_the_published_peak(plans):
    r = plans['h100']
    t, f, e = r['target'], r['flops'], r['estimate']
    assert t['peak_flops'] == 989e12 and r['fits'] is True and 0 < r['headroom'] < 1
    assert e['step_s'] == pytest.approx(f['model_per_device'] / (989e12 * 0.5))
    assert e['tokens_per_s'] == pytest.approx(r['config']['tokens_per_step'] / e['step_s'])
    assert 'standing in for h100x8' in t['compiled_for']


@pytest.mark.slow  # the `plans` fixture: 13 real plans compiled, ~85-140 s
def test_micro_batches_that_do_not_split_are_noted(plans):
    assert plans['h100']['notes'] == []
    (note,) = plans['uneven_micro']['notes']
    assert 'micro-batch has 4 rows' in note and 'data x fsdp x expert = 8' in note


@pytest.mark.slow  # the `plans` fixture: 13 real plans compiled, ~85-140 s
def test_moe_plan_counts_all_to_alls_and_active_parameters(plans):
    r = plans['moe']
    assert r['mesh'] == _mesh('data=2,expert=4')
    assert r['collectives']['all-to-all']['count'] > 0  # tokens to their experts and back
    c = r['config']
    # 4 experts, top-2: the routed kernels count half; everything else whole
    model = models.from_config(cli.load_config('experiments/lm.py:experts=4', []))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 8), jnp.int32))['params'])
    routed = 4 * 3 * 4 * 128 * 384  # layers x (gate, up, down) x experts x embed x mlp
    assert c['num_params'] == gpt.count_params(shapes)
    assert c['active_params'] == gpt.active_params(model, shapes) == c['num_params'] - routed // 2
    assert c['flops_per_token'] == pytest.approx(gpt.flops_per_token(model, 128))


@pytest.mark.slow  # the `plans` fixture: 13 real plans compiled, ~85-140 s
def test_every_task_plans(plans):
    for name in TASKS:
        r = plans[name]
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
print(json.dumps(hlo.collectives(c.as_text(), 8)))
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
    assert (c['all-gather']['count'], c['all-gather']['bytes']) == (12, 12 * 256 * 256 * 4)
    assert c['all-gather']['wire_bytes'] == 12 * 256 * 256 * 4 * 7 / 8  # ring over 8 devices
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
    c = hlo.collectives(TPU_STYLE_HLO, num_devices=4)  # no replica_groups: all 4 devices
    assert c['all-gather'] == {'count': 5, 'bytes': 5 * 16 * 8 * 2,
                               'wire_bytes': 5 * 16 * 8 * 2 * 3 / 4}
    assert c['all-reduce'] == {'count': 5, 'bytes': 5 * 2 * 4 * 4,  # start counted, done not
                               'wire_bytes': 2 * 5 * 2 * 4 * 4 * 3 / 4}
    assert c['reduce-scatter'] == {'count': 1, 'bytes': 8, 'wire_bytes': 8 * 3}
    assert c['unknown_trip_loops'] == 0


@pytest.mark.parametrize('groups,size', [
    ('replica_groups={{0,1,2,3},{4,5,6,7}}', 4), ('replica_groups=[2,4]<=[8]', 4),
    ('replica_groups=[4,2]<=[2,4]T(1,0)', 2), ('replica_groups={}', 8),
    ("replica_groups=mesh['axis_0'=2,'axis_1'=4,'axis_2'=1] {'axis_1','axis_2'}", 4),
])
def test_replica_group_sizes(groups, size):
    line = f'  %ag = f32[8]{{0}} all-gather(%x), {groups}, dimensions={{0}}'
    assert hlo.group_size(line, num_devices=8) == size


MULTILINE_CUSTOM_CALL_HLO = """\
HloModule m, entry_computation_layout={(bf16[8,128]{1,0})->bf16[64,128]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (a: bf16[8,128]) -> bf16[64,128] {
  %a = bf16[8,128]{1,0} parameter(0)
  %k = bf16[8,128]{1,0} custom-call(%a), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "module {
  func.func @kernel(%arg0: memref<8x128xbf16>) {
    return
  }
}
", "cost_estimate": {"flops": 1, "note": "a \\"quoted\\" } brace"}
}}
  %ag = bf16[64,128]{1,0} all-gather(%k), dimensions={0}
  ROOT %ar = bf16[64,128]{1,0} all-reduce(%ag), to_apply=%add
}
"""


def test_collectives_parser_reads_past_a_multi_line_custom_call():
    """A kernel whose backend_config spans lines, some starting with '}' (a Pallas /
    Mosaic body): the instructions after it still count."""
    comps, entry = hlo.parse_computations(MULTILINE_CUSTOM_CALL_HLO)
    assert entry == 'main' and len(comps['main']) == 4 and len(comps['add']) == 3
    assert 'custom-call' in comps['main'][1] and comps['main'][1].count('\n') == 6
    c = hlo.collectives(MULTILINE_CUSTOM_CALL_HLO)
    assert (c['all-gather']['count'], c['all-gather']['bytes']) == (1, 64 * 128 * 2)
    assert (c['all-reduce']['count'], c['all-reduce']['bytes']) == (1, 64 * 128 * 2)


# What libtpu makes of an FSDP step over a whole slice (read from a v5p-128 compile): the
# gradient reduce-scatter is a custom fusion around an all-reduce of the padded gradient, and
# the weight all-gather is an all-reduce of a zero buffer holding the local shard.
TPU_DECOMPOSED_HLO = """\
HloModule m

%add (x: bf16[], y: bf16[]) -> bf16[] {
  %x = bf16[] parameter(0)
  %y = bf16[] parameter(1)
  ROOT %s = bf16[] add(%x, %y)
}

%all-reduce-scatter.1 (input: bf16[64,16]) -> bf16[16,16] {
  %input = bf16[64,16]{1,0} parameter(0)
  %ar = bf16[64,16]{1,0} all-reduce(%input), replica_groups={{0,1,2,3}}, to_apply=%add
  %i = s32[] partition-id()
  ROOT %ds = bf16[16,16]{1,0} dynamic-slice(%ar, %i, %i), dynamic_slice_sizes={16,16}
}

%fused_dus (p0: bf16[64,16], p1: bf16[16,16], p2: s32[]) -> bf16[64,16] {
  %p0 = bf16[64,16]{1,0} parameter(0)
  %p1 = bf16[16,16]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  ROOT %dus = bf16[64,16]{1,0} dynamic-update-slice(%p0, %p1, %p2, %p2)
}

ENTRY %main (w: bf16[16,16], g: bf16[64,16]) -> (bf16[64,16], bf16[16,16]) {
  %w = bf16[16,16]{1,0} parameter(0)
  %g = bf16[64,16]{1,0} parameter(1)
  %zero = bf16[] constant(0)
  %buffer = bf16[64,16]{1,0} broadcast(%zero), dimensions={}
  %i = s32[] partition-id()
  %placed = bf16[64,16]{1,0} fusion(%buffer, %w, %i), kind=kLoop, calls=%fused_dus
  %gathered = bf16[64,16]{1,0} all-reduce(%placed), replica_groups={{0,1,2,3}}, to_apply=%add
  %rs = bf16[16,16]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  %norm = bf16[64,16]{1,0} all-reduce(%g), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %out = (bf16[64,16]{1,0}, bf16[16,16]{1,0}) tuple(%gathered, %rs)
}
"""


def test_collectives_read_the_tpu_compilers_decomposed_forms():
    """A reduce-scatter fusion counts as one reduce-scatter of its shard (its inner
    all-reduce not again); an all-reduce of a placed shard counts as an all-gather done as
    an all-reduce (an all-reduce's traffic); a plain all-reduce stays one."""
    c = hlo.collectives(TPU_DECOMPOSED_HLO, num_devices=4)
    shard, full = 16 * 16 * 2, 64 * 16 * 2
    assert c['reduce-scatter'] == {'count': 1, 'bytes': shard, 'wire_bytes': shard * 3}
    assert c['all-gather-as-all-reduce'] == {'count': 1, 'bytes': full,
                                             'wire_bytes': 2 * full * 3 / 4}
    assert c['all-reduce'] == {'count': 1, 'bytes': full, 'wire_bytes': 2 * full * 3 / 4}
    assert c['all-gather']['count'] == 0


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
    # parameters + optimizer state alone over capacity: the state's knobs come first
    largest, hints = estimate.advice(dict(params=4, optimizer=8, batch=0, temporaries=10),
                                     dict(remat='full'), capacity=10)
    assert largest == 'temporaries' and hints[0].startswith('optimizer.mu_dtype')
    assert any('grad_accum_steps' in h for h in hints)
    # only knobs that keep the objective: never a smaller batch or sequence
    assert not any('batch_size' in h or 'seq_len' in h for h in hints)


@pytest.mark.parametrize('args,message', [
    (['--target', 'v5p-3'], 'v5p slices come in sizes'),
    (['--mesh', 'fsdp=3'], 'needs 3 devices but 8 are available'),
])
def test_bad_input_is_one_line(tfds_dir, args, message):
    proc = run_cli('plan', '--config', 'experiments/lm.py', *args, devices=8, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().count('\n') == 0, proc.stderr


@pytest.mark.parametrize('call,message', [
    (lambda: targets.parse('tpu9'), 'expected one of'),
    (lambda: targets.parse('cpu:0'), 'at least one device'),
    (lambda: planning.parse_mesh('pipeline=2'), 'expected axis=size pairs'),
    (lambda: planning.parse_mesh('fsdp=two'), 'not an integer'),
    (lambda: planning.plan(None, 'cpu:8', mfu=1.5), '--mfu 1.5'),
])
def test_bad_arguments(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_tpu_compiler_when_libtpu_is_installed(tfds_dir):
    """With the `tpu-plan` extra, v5p targets compile with the real TPU compiler."""
    pytest.importorskip('libtpu')
    proc = run_cli('plan', '--json', '--config', 'experiments/lm.py', '--target', 'v5p-8',
                   '--mesh', 'fsdp=4', '--config.train.batch_size=8')
    r = json.loads(proc.stdout)
    assert 'libtpu' in r['target']['compiled_for'] and r['fits'] is True
    assert r['memory']['exact']['params'] == pytest.approx(
        r['config']['num_params'] * 4 / 4, rel=0.05)
    # libtpu's own peak (live buffers) is given, and never above ours (which adds the
    # fragmentation its temporaries hold)
    assert 0 < r['memory']['xla']['heap_peak'] <= r['memory']['peak']


LIBTPU_GATHER = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxbig import parallel
from jaxbig.planning import hlo, targets
devices, _ = targets.devices_for(targets.parse('v5p-128'))
out = {}
for mesh_text in ('fsdp=64', 'data=2,fsdp=32'):
    mesh = parallel.make_mesh(dict(**{k: int(v) for k, v in
                                      (p.split('=') for p in mesh_text.split(','))}), devices)
    w = jax.ShapeDtypeStruct((4096, 1024), jnp.float32,
                             sharding=NamedSharding(mesh, P('fsdp', None)))
    gather = lambda w: jax.lax.with_sharding_constraint(w.astype(jnp.bfloat16),
                                                        NamedSharding(mesh, P()))
    text = jax.jit(gather).lower(w).compile().as_text()
    out[mesh_text] = {k: v['count'] for k, v in hlo.collectives(text, 64).items()
                      if isinstance(v, dict)}
print(json.dumps(out))
"""


def test_libtpu_decomposes_whole_slice_gathers(tfds_dir):
    """With the TPU compiler: one weight gather over all 64 chips of a v5p-128 compiles to
    an all-reduce of a zero-padded shard (libtpu's all-gather decomposer), read as
    all-gather-as-all-reduce; over 32 of them (data=2 x fsdp=32) it stays an all-gather."""
    pytest.importorskip('libtpu')
    proc = subprocess.run([sys.executable, '-c', LIBTPU_GATHER], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts['fsdp=64']['all-gather-as-all-reduce'] == 1
    assert counts['fsdp=64']['all-gather'] == counts['fsdp=64']['all-reduce'] == 0
    assert counts['data=2,fsdp=32']['all-gather'] == 1
    assert counts['data=2,fsdp=32']['all-gather-as-all-reduce'] == 0


def test_sharded_bytes_matches_numpy():
    mesh = jax.make_mesh((1,), ('x',))
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('x'))
    tree = {'a': jax.ShapeDtypeStruct((6, 4), jnp.float32),
            'b': jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    assert estimate.sharded_bytes(tree, {'a': s, 'b': s}) == 6 * 4 * 4 + 3 * 2
    assert math.isclose(estimate.total_bytes(tree), 102)
