"""The invariance matrix: no speed or memory switch changes what is trained.

Every objective (tests/invariance_cases.py: tiny models from the experiment configs,
synthetic batches in each loss's format) is trained STEPS=3 updates under a switch and
compared with the reference run — 1 device, grad_accum_steps 1, scan_layers off, remat
'none', one update per call — on each update's loss and train metrics and on the
parameters after the 3 updates. The 4-row batches hold unequal numbers of valid targets
(rows 1, 16, 3, 7 tokens; classification: a padding row), so micro-batches (rows 0,2 / 1,3)
and devices (rows 0,1 / 2,3) carry different counts and only the one-division rule
(jaxbig/aggregate.py) gives the reference numbers.

Optimizer: SGD, lr 0.1, momentum 0.9, weight decay 0.01 on every parameter — linear in the
gradient, so a rounding-sized gradient difference stays rounding-sized (Adam divides by
sqrt(v) and amplifies the rounding of near-zero gradients).

Tolerance (float32 rounding: sums in another order, other kernels for scan / remat /
sharded programs): losses and metrics rtol 1e-5, atol 1e-6; parameters rtol 1e-5, atol
1e-5 (an element moves up to ~0.1 in 3 updates; the largest difference seen is ~4e-6).
The reference runs are checked to train (losses change, parameters move by > 1e-3), and
test_old_mean_of_means_would_differ shows that the mean of per-micro-batch (per-device)
means misses the accumulated (pmapped) loss and gradient norm by far more than this
tolerance, so the matrix would have failed under the old rule.

Matrix (objective x switch):

                   accum2 accum4  pmap2  mesh2x2 scan  remat  spc2  splash  chunk
    lm_packed      pass   pass    pass   pass    pass  pass   pass   pass   pass
    lm_unpacked    pass   pass    pass   pass    pass  pass   pass   pass   pass
    sft            pass   pass    pass   pass    pass  pass   pass   pass   pass
    lm_moe         pass   pass    pass   pass    pass  pass   pass   pass   pass
    mlm            pass   pass    pass   pass    pass  -      pass   -       -
    seq2seq        pass   pass    pass   pass    pass  -      pass   -       -
    distill        pass   pass    pass   pass    pass  pass   pass   pass    -
    dpo            pass   pass    pass   pass    pass  pass   pass   pass    -
    grpo           pass   pass    pass   pass    pass  pass   pass   pass    -
    classification pass   pass    pass   pass    pass  -      pass   -       -
    simclr         pass   pass    pass   pass    pass  -      pass   -       -
    clip           pass   pass    pass   pass    pass  -      pass   -       -
    siglip         pass   pass    pass   pass    pass  -      pass   -       -
    clap           pass   pass    pass   pass    pass  -      pass   -       -

  accum2 / accum4: optimizer.grad_accum_steps (4: one row per micro-batch); the coupled
  objectives (simclr, clip, siglip, clap) accumulate through the step's gradient cache
  (losses.coupled_parts), and a coupled loss without that split is refused in one line
  (losses.check_accumulation). pmap2: `jax.pmap` over 2 devices (pmap.pmap_train_step,
  pmap_axis=pmap.AXIS); mesh2x2: jit on a data=2 x fsdp=2 mesh with train.py's state
  shardings (some parameters really split); scan: scan_layers on in the model and every
  tower / backbone, started from step.init_fn's own (layout-independent) init, checked equal
  to the reference's numbers stacked (siglip and clap have 1-layer towers: a 1-step scan);
  remat: gpt's 'full' and 'dots', and 'full' with scan; spc2: step.multi_step runs updates
  1-2 in one call, then update 3 in another; splash: model.attention='splash' (the Pallas
  kernel, interpreted on CPU; the 16-token rows padded to its 128-token blocks); chunk:
  loss.logits_chunk=5 (the head on 5 positions at a time, the 16-token rows padded to 20),
  for the objectives of jaxbig.losses.autoregressive.
  Masked-LM masks are drawn per global row (batch['row_ids']) from the update's key, so
  they do not depend on the split; a coupled loss under pmap reports each device's share
  of the global count (pmap.replica_share), so `loss_count` is the reference's too.

The device runs (pmap2, mesh2x2) happen in one subprocess with 4 simulated CPU devices (the
device count is fixed when jax is imported), started when this module starts, beside the
in-process runs; it computes only the device runs the selected tests need, and a third of
the initial states (the test process the rest; each process reads the other's). Programs
are compiled with LLVM's optimisations and XLA:CPU's new fusion emitters off (a quarter of
the compile time, which is nearly all the cost here; tests/invariance_cases.py).

Default suite (~1 min on 2 cores): every objective under accum2, pmap2 and mesh2x2, the
references, the refusal, the old-rule check, remat 'full' of lm_unpacked and splash of
lm_packed and sft, chunk of lm_moe; `-m slow` (~2 min): accum4, scan, the other remat, splash
and chunk cases, steps_per_call.
"""
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import invariance_cases as ic
from jaxbig import losses
from jaxbig.config import ConfigError

TOL = dict(rtol=1e-5, atol=1e-6)
PARAM_TOL = dict(rtol=1e-5, atol=1e-5)

OBJECTIVES = list(ic.OBJECTIVES)
COUPLED = ('simclr', 'clip', 'siglip', 'clap')
GPT = ('lm_packed', 'lm_unpacked', 'sft', 'distill', 'lm_moe', 'dpo', 'grpo')

SWITCHES = {  # in-process switches -> ic.run_single keywords
    'accum2': dict(accum=2),
    'accum4': dict(accum=4),
    'scan': dict(scan=True),
    'remat_full': dict(remat='full'),
    'remat_dots': dict(remat='dots'),
    'scan_remat_full': dict(scan=True, remat='full'),
    'steps_per_call': dict(steps_per_call=2),
    'splash': dict(attention='splash'),  # the Pallas kernel (interpreted on CPU)
    'chunk': dict(logits_chunk=5),  # loss.logits_chunk: the head 5 positions at a time
}
CHUNKED = ('lm_packed', 'lm_unpacked', 'sft', 'lm_moe')  # jaxbig.losses.autoregressive
FAST = ({('accum2', o) for o in OBJECTIVES} | {('remat_full', 'lm_unpacked')}
        | {('splash', 'lm_packed'), ('splash', 'sft'), ('chunk', 'lm_moe')})



def _applies(switch, objective):
    if 'remat' in switch or switch == 'splash':
        return objective in GPT
    if switch == 'chunk':
        return objective in CHUNKED
    return True


def _param(switch, objective):
    marks = []
    if (switch, objective) not in FAST:
        marks.append(pytest.mark.slow)
    return pytest.param(objective, switch, marks=marks, id=f'{objective}-{switch}')


# ------------------------------------------------------------------------- the runs

_runs: dict = {}


def run(objective, switch='reference'):
    """The result of (objective, switch) in this process, computed once."""
    if (objective, switch) not in _runs:
        _runs[objective, switch] = ic.run_single(objective, **SWITCHES.get(switch, {}))
    return _runs[objective, switch]


def assert_same(got, ref, what):
    np.testing.assert_allclose(got['loss'], ref['loss'], **TOL, err_msg=f'{what}: loss')
    assert sorted(got['metrics']) == sorted(ref['metrics']), what
    for key, values in ref['metrics'].items():
        # float32 rounding relative to the largest value the metric takes in the run: a DPO
        # reward is a difference of summed log-probs, so a step where it is near 0 carries
        # the rounding of the other steps' scale (0.2346263 vs 0.2346225 beside -4.3 under
        # accum2 on jax 0.12)
        scale = float(np.max(np.abs(values))) if np.size(values) else 0.0
        np.testing.assert_allclose(got['metrics'][key], values, rtol=0,
                                   atol=TOL['atol'] + TOL['rtol'] * scale,
                                   err_msg=f'{what}: metric {key}')
    assert sorted(got['params']) == sorted(ref['params']), what
    for path, value in ref['params'].items():
        np.testing.assert_allclose(got['params'][path], value, **PARAM_TOL,
                                   err_msg=f'{what}: param {path}')


def _device_runs_needed(session) -> list[str]:
    """'<objective>:<pmap|mesh>' for every selected test of this module that needs one,
    in the order of OBJECTIVES (the order the inits are written)."""
    needed = set()
    for item in session.items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        if getattr(item, 'module', None) is sys.modules[__name__] and params.get('device_run'):
            needed.add(params['device_run'])
    return sorted(needed, key=lambda r: (OBJECTIVES.index(r.split(':')[0]), r))


@pytest.fixture(scope='module', autouse=True)
def device_process(request, tmp_path_factory):
    """Starts the device subprocess (4 CPU devices) on the device runs the selected tests
    need, then writes the reference initial states it waits for (computed here once, for
    both processes); yields (Popen, its directory) or None."""
    runs = _device_runs_needed(request.session)
    if not runs:
        yield None
        return
    directory = tmp_path_factory.mktemp('invariance')
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
        f'{ic.XLA_FLAGS} --xla_force_host_platform_device_count={ic.DEVICES}'))
    with open(directory / 'stdout', 'w') as out, open(directory / 'stderr', 'w') as err:
        proc = subprocess.Popen(
            [sys.executable, ic.__file__, str(directory), str(directory / 'out.pkl'), *runs],
            cwd=ic.REPO, env=env, stdout=out, stderr=err, text=True)
    mine, theirs = ic.split_inits(runs)
    ic.share_inits(str(directory), theirs, alive=lambda: proc.poll() is None)
    try:
        for key in mine:  # now: the subprocess may be waiting for them
            ic.reference_init(key)
        yield proc, directory
    finally:
        ic.share_inits(None, ())
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope='module')
def device_results(device_process):
    import json
    import pickle

    proc, directory = device_process
    rc = proc.wait(timeout=900)
    stderr = (directory / 'stderr').read_text()
    assert rc == 0, stderr[-4000:]
    assert json.loads((directory / 'stdout').read_text().strip().splitlines()[-1]) == {
        'devices': ic.DEVICES}
    with open(directory / 'out.pkl', 'rb') as f:
        return pickle.load(f)


# ------------------------------------------------------------------------- the tests

@pytest.mark.parametrize('objective', OBJECTIVES)
def test_reference_trains(objective):
    """The reference moves: the comparisons below are between runs that learn something."""
    ref = run(objective)
    init = ic.flat(ic.reference_init(objective).params)
    assert np.all(np.isfinite(ref['loss'])) and len(set(ref['loss'])) == ic.STEPS, ref['loss']
    moved = max(np.abs(ref['params'][p] - init[p]).max() for p in init)
    assert moved > 1e-3, moved
    assert min(ref['metrics']['loss_count']) > 0


def test_accumulation_refused_for_a_coupled_loss_without_the_split():
    """The coupled objectives here accumulate through the step's gradient cache (their
    embed / loss_from_embeddings split); one without the split is refused in one line."""
    config = ic.load_config('clip')
    unsplit = types.SimpleNamespace(COUPLES_EXAMPLES=True, loss_fn=None)
    for accum in (1, 2, 4):
        config.optimizer.grad_accum_steps = accum
        for name in COUPLED:
            losses.check_accumulation(ic.objective(name).module, config)
        if accum == 1:
            losses.check_accumulation(unsplit, config)
            continue
        with pytest.raises(ConfigError) as e:
            losses.check_accumulation(unsplit, config)
        message = str(e.value)
        assert '\n' not in message and f'grad_accum_steps={accum}' in message, message


@pytest.mark.parametrize('objective, switch', [
    _param(switch, objective) for switch in SWITCHES for objective in OBJECTIVES
    if _applies(switch, objective)])
def test_switch_matches_reference(objective, switch):
    if switch.startswith('accum'):  # accepted (coupled objectives: the gradient cache)
        config = ic.load_config(objective)
        config.optimizer.grad_accum_steps = SWITCHES[switch]['accum']
        losses.check_accumulation(losses.get_loss_module(config.loss.name), config)
    assert_same(run(objective, switch), run(objective), f'{objective} {switch}')


def _old_rule(objective, groups):
    """(loss, grad norm) at the initial params on the first batch under the old rule (mean
    over `groups` of rows of each group's mean) and the one-division rule, from each
    group's Mean(total, count) and summed gradient, divided in NumPy."""
    obj = ic.objective(objective)
    model = obj.model()
    params = ic.reference_init(objective).params

    def total_and_count(p, b):
        loss, _ = obj.loss_fn(model.apply, p, b, {}, obj.config.loss, train=True)
        return loss.total, loss.count

    f = ic.jit(jax.value_and_grad(total_and_count, has_aux=True))
    parts = []
    for rows in groups:
        (total, count), grads = f(params, jax.tree.map(lambda x: x[np.array(rows)],
                                                       obj.batches[0]))
        grads = np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.device_get(grads))])
        parts.append((float(total), float(count), grads.astype(np.float64)))
    totals, counts, grads = zip(*parts)
    new = (sum(totals) / sum(counts), np.linalg.norm(sum(grads) / sum(counts)))
    old = (np.mean([t / c for t, c in zip(totals, counts)]),
           np.linalg.norm(np.mean([g / c for g, c in zip(grads, counts)], axis=0)))
    return old, new, counts


@pytest.mark.parametrize('device_run, groups', [
    ('', ([0, 2], [1, 3])),  # accum2's micro-batches
    ('lm_unpacked:pmap', ([0, 1], [2, 3])),  # pmap2's devices
], ids=['accum2', 'pmap2'])
def test_old_mean_of_means_would_differ(request, device_run, groups):
    objective = 'lm_unpacked'
    old, new, counts = _old_rule(objective, groups)
    assert counts in ((4.0, 23.0), (17.0, 10.0)), counts
    got = (request.getfixturevalue('device_results')[device_run] if device_run
           else run(objective, 'accum2'))
    for i, key in enumerate(('total_loss', 'grad_norm')):
        value = got['metrics'][key][0]
        np.testing.assert_allclose(value, new[i], rtol=1e-5, atol=1e-6, err_msg=key)
        tolerance = TOL['atol'] + TOL['rtol'] * abs(value)
        assert abs(old[i] - value) > 100 * tolerance, (key, old[i], value)


@pytest.mark.parametrize('objective, device_run', [
    pytest.param(o, f'{o}:{layout}', id=f'{o}-{layout}')
    for o in OBJECTIVES for layout in ('pmap', 'mesh')])
def test_devices_match_reference(device_results, objective, device_run):
    got = device_results[device_run]
    assert 'error' not in got, got.get('error')
    assert_same(got, run(objective), device_run)
    if device_run.endswith(':mesh'):
        assert got['sharded_leaves'] > 0  # fsdp=2 really split parameters


@pytest.mark.parametrize('device_run', [f'{o}:pmap' for o in COUPLED])
def test_pmap_loss_count_of_coupled_objectives(device_results, device_run):
    objective = device_run.split(':')[0]
    np.testing.assert_array_equal(device_results[device_run]['metrics']['loss_count'],
                                  run(objective)['metrics']['loss_count'])
