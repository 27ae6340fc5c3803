"""train.steps_per_call: several updates per compiled call (step.multi_step) are the same
updates as one per call; calls end at every log / eval / checkpoint step."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_LM, run_cli
from jaxbig import safety
from jaxbig.train import steps_in_call

LM = 'experiments/lm.py'


@pytest.mark.parametrize('step, last, per_call, cadences, expected', [
    (0, 100, 1, [20], 1),
    (0, 100, 4, [20], 4),
    (16, 100, 4, [20], 4),
    (18, 100, 4, [20], 2),          # cut at the log step 20
    (20, 100, 4, [20, 0, 0], 4),    # 0 = cadence off
    (0, 100, 8, [20, 6], 6),        # the earliest cadence wins
    (6, 100, 8, [20, 6], 6),
    (96, 98, 8, [20], 2),           # the last step
    (5, 7, 3, [2, 4, 5], 1),
    (0, 600, 4, [20, 200, 200], 4),
])
def test_steps_in_call(step, last, per_call, cadences, expected):
    assert steps_in_call(step, last, per_call, cadences) == expected


def test_steps_in_call_never_crosses_a_cadence_or_the_end():
    rng = np.random.default_rng(0)
    for _ in range(200):
        last, per_call = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        cadences = [int(c) for c in rng.integers(0, 12, size=3)]
        step, ends = 0, []
        while step < last:
            n = steps_in_call(step, last, per_call, cadences)
            assert 1 <= n <= per_call
            step += n
            ends.append(step)
        due = {s for c in cadences if c for s in range(c, last + 1, c)} | {last}
        assert due <= set(ends), (last, per_call, cadences, ends)


def test_nonfinite_watch_names_the_step_inside_a_call():
    watch = safety.NonFiniteWatch(skip=False)
    ok = jnp.ones(4)
    watch.add(4, {'total_loss': ok, 'grad_norm': ok})  # updates 1..4
    watch.add(8, {'total_loss': jnp.array([1.0, 1.0, jnp.nan, 1.0]), 'grad_norm': ok})
    with pytest.raises(safety.TrainingDiverged, match='train/total_loss=nan at step 7;'):
        watch.check()
    skip = safety.NonFiniteWatch(skip=True)
    skip.add(3, {'skipped': jnp.array([0.0, 1.0, 1.0])})
    skip.add(4, {'skipped': jnp.array(1.0)})  # one update per call
    skip.check()
    assert skip.skipped == 3


def rows(workdir) -> dict[int, dict]:
    """{step: metrics} from metrics.jsonl without the timing columns."""
    out = {}
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
            row = json.loads(line)
            out.setdefault(row.pop('step'), {}).update(
                {k: v for k, v in row.items() if not k.endswith('_per_sec')})
    return out


# 7 steps; logs at 2, 4, 6, 7; evals at 4, 7; checkpoints at 5, 7. steps_per_call=3 runs
# calls of 2, 2, 1, 1, 1 updates (cut by the cadences), the resumed run 1 + 1.
CADENCES = ['--config', f'{LM}:steps=7', *TINY_LM, '--config.optimizer.decay_steps=7',
            '--config.train.log_every=2', '--config.train.eval_every=4',
            '--config.evals.val.num_examples=16', '--config.train.checkpoint_every=5']


@pytest.fixture(scope='module')
def one_per_call(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('one_per_call')
    run_cli('train', '--workdir', str(workdir), *CADENCES)
    return rows(workdir)


def test_several_updates_per_call_equal_one_per_call_and_resume(one_per_call, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), *CADENCES, '--config.train.steps_per_call=3',
            '--config.train.steps=5')
    run_cli('train', '--workdir', str(tmp_path), *CADENCES, '--config.train.steps_per_call=3')
    got = rows(tmp_path)
    assert sorted(one_per_call) == [2, 4, 6, 7]
    assert sorted(got) == [2, 4, 5, 6, 7]  # 5: the end of the first launch
    assert {k for k in got[7] if k.startswith('val/')}, got[7]
    for step, expected in one_per_call.items():
        assert got[step].keys() == expected.keys(), step
        for key, value in expected.items():
            np.testing.assert_allclose(got[step][key], value, rtol=1e-6, atol=1e-7,
                                       err_msg=f'{key} at step {step}')
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['5', '7']


@pytest.mark.slow  # ~20 s (8 devices); steps_per_call is checked on one device by default
def test_many_updates_per_call_on_a_sharded_mesh(one_per_call, tmp_path):
    """Stacked batches [steps, batch, ...] split over data x fsdp; 4 updates per call."""
    run_cli('train', '--workdir', str(tmp_path), *CADENCES, '--config.train.steps_per_call=4',
            '--config.train.log_every=4', '--config.parallel.data=2',
            '--config.parallel.fsdp=2', devices=4)
    got = rows(tmp_path)
    assert sorted(got) == [4, 7]
    for step in (4, 7):
        np.testing.assert_allclose(got[step]['train/loss'], one_per_call[step]['train/loss'],
                                   rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[step]['val/loss'], one_per_call[step]['val/loss'],
                                   rtol=0, atol=1e-5)


@pytest.mark.slow
def test_many_updates_per_call_under_pmap(one_per_call, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), *CADENCES, '--config.train.steps_per_call=2',
            '--config.parallel.strategy=pmap', devices=4)
    got = rows(tmp_path)
    assert sorted(got) == sorted(one_per_call)
    for step, expected in one_per_call.items():
        np.testing.assert_allclose(got[step]['train/loss'], expected['train/loss'],
                                   rtol=0, atol=1e-5)


def test_nan_guard_names_the_step_inside_a_call(tfds_dir, tmp_path):
    proc = run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=8', *TINY_LM,
                   '--config.train.debug_nan_at_step=6', '--config.train.log_every=8',
                   '--config.train.steps_per_call=4', '--config.train.checkpoint_every=4',
                   check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert 'non-finite train/total_loss=nan at step 6;' in proc.stderr.strip().splitlines()[-1]
    assert os.listdir(tmp_path / 'checkpoints') == ['4']
