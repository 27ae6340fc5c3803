"""The best checkpoint (`<workdir>/best/`) and early stopping survive resumes: a resumed run
compares against the best value seen before, keeps counting patience, and a run that stopped
early stays stopped."""
import json
import math
import os

import jax.numpy as jnp
import pytest

from conftest import TINY_LM, metric_series, run_cli
from jaxbig.checkpoint import BestCheckpoint
from jaxbig.config import ConfigError


def _best_steps(workdir):
    path = os.path.join(workdir, 'best', 'checkpoints')
    return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def _launch(workdir, evals, patience=2, mode='min', start=0):
    """One 'launch': a tracker resumed at step `start` fed {step: value}; returns the step at
    which it signalled an early stop (None if it did not)."""
    tracker = BestCheckpoint(str(workdir), metric='val/x', mode=mode, patience=patience)
    tracker.resume(start)
    stop = None
    try:
        if tracker.stopped_early():
            return start
        for step, value in evals.items():
            if tracker.update(step, {'val/x': value}, {'w': jnp.full((2,), float(step))}):
                stop = step
                break
    finally:
        tracker.close()
    return stop


def test_resumed_tracker_keeps_the_better_earlier_checkpoint(tmp_path):
    assert _launch(tmp_path, {1: 3.0, 2: 2.0, 3: 2.5}) is None
    assert _best_steps(tmp_path) == [2]
    # A fresh tracker (as after a resume) must not take the worse step 4 as its first best,
    # and step 4 is the second evaluation without improvement: patience 2 stops the run.
    assert _launch(tmp_path, {4: 2.4, 5: 1.0}, start=3) == 4
    assert _best_steps(tmp_path) == [2]
    # Rerunning the stopped run trains no further, whatever it would be fed...
    assert _launch(tmp_path, {5: 1.0}, start=4) == 4
    assert _best_steps(tmp_path) == [2]
    # ...unless patience is raised: then it trains on and counts the earlier evaluations.
    assert _launch(tmp_path, {5: 2.2, 6: 2.1, 7: 1.5}, patience=4, start=4) == 6
    assert _best_steps(tmp_path) == [2]
    record = json.load(open(tmp_path / 'best' / BestCheckpoint.FILE))
    assert record['history'] == [[1, 3.0], [2, 2.0], [3, 2.5], [4, 2.4], [5, 2.2], [6, 2.1]]


def test_resume_forgets_evaluations_after_the_restored_step(tmp_path):
    # A run evaluated steps 1..4 (best at 3), then died; its checkpoint is from step 2. The
    # relaunch recomputes steps 3, 4 and must neither count them twice nor keep step 3's
    # best checkpoint from the lost future.
    assert _launch(tmp_path, {1: 3.0, 2: 2.0, 3: 1.0, 4: 1.5}) is None
    assert _best_steps(tmp_path) == [3]
    assert _launch(tmp_path, {3: 1.8, 4: 1.9, 5: 1.95, 6: 1.0}, start=2) == 5
    assert _best_steps(tmp_path) == [3]
    record = json.load(open(tmp_path / 'best' / BestCheckpoint.FILE))
    assert record['history'] == [[1, 3.0], [2, 2.0], [3, 1.8], [4, 1.9], [5, 1.95]]


def test_non_finite_values_are_never_best_and_mode_max(tmp_path):
    assert _launch(tmp_path, {1: math.nan, 2: 0.5, 3: math.inf, 4: 0.7, 5: 0.6},
                   mode='max', patience=0) is None
    assert _best_steps(tmp_path) == [4]
    # Another metric mode starts a fresh record: step 6 is the first (so best) evaluation.
    assert _launch(tmp_path, {6: 0.9}, mode='min', patience=0, start=5) is None
    assert _best_steps(tmp_path) == [6]


def test_bad_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.best_mode='best'"):
        BestCheckpoint(str(tmp_path), metric='val/x', mode='best')


@pytest.mark.slow
def test_cli_patience_keeps_best_and_a_rerun_stays_stopped(tfds_dir, tmp_path):
    """The validation loss falls as the tiny LM trains, so with best_mode=max the metric
    stops 'improving' after its first evaluation: best/ must keep step 1 through a resume
    (which the old in-memory tracker overwrote) and patience must fire after it."""
    args = ['train', '--workdir', str(tmp_path), '--config', 'experiments/lm.py:steps=10', *TINY_LM,
            '--config.train.eval_every=1', '--config.evals.val.num_examples=16',
            '--config.train.best_metric=val/loss', '--config.train.best_mode=max',
            '--config.train.patience=2', '--config.optimizer.decay_steps=10',
            '--config.train.checkpoint_every=0']
    run_cli(*args, '--config.train.steps=2')
    val = metric_series(tmp_path, 'val/loss')
    assert val[2] < val[1] and _best_steps(tmp_path) == [1]
    proc = run_cli(*args, '--config.train.steps=10')
    assert 'resumed from' in proc.stderr and 'early stop at step 3' in proc.stderr
    val = metric_series(tmp_path, 'val/loss')
    assert sorted(val) == [1, 2, 3] and val[3] < val[1]
    assert _best_steps(tmp_path) == [1]
    rerun = run_cli(*args, '--config.train.steps=10')
    assert 'this run stopped early' in rerun.stderr
    assert max(metric_series(tmp_path)) == 3 and _best_steps(tmp_path) == [1]
