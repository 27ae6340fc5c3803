"""The default experiment, shortened, learns more than bigram statistics."""
import numpy as np
import pytest

from conftest import metric_series, run_cli
from jaxbig import config as config_lib
from jaxbig import data


def bigram_entropy(stream: np.ndarray) -> float:
    """H(x_t | x_{t-1}) in nats from the bigram counts of `stream` (in-sample, so optimistic)."""
    pairs = np.bincount(stream[:-1].astype(np.int64) * 256 + stream[1:], minlength=256 * 256)
    joint = pairs.reshape(256, 256).astype(np.float64)
    joint /= joint.sum()
    prev = joint.sum(1, keepdims=True)
    nz = joint > 0
    return float(-(joint[nz] * np.log((joint / np.where(prev > 0, prev, 1))[nz])).sum())


@pytest.mark.slow  # ~70 s: 150 steps of the default model (the suite's fast compiles: ~140 s)
def test_default_experiment_beats_bigram_entropy(tfds_dir, tmp_path):
    config = config_lib.load('experiments/lm.py')
    pipe = data.build_pipeline(config.data, split='validation', batch_size=1, seed=0)
    bigram = bigram_entropy(pipe.corpus.stream())
    assert 2.0 < bigram < 3.0  # CPython 3.11's standard library: ~2.43 nats/byte

    # The default run's first 150 steps (its learning-rate schedule spans the default 600).
    run_cli('train', '--config', 'experiments/lm.py:steps=150', '--workdir', str(tmp_path),
            '--config.optimizer.decay_steps=600', '--config.train.eval_every=0',
            '--config.evals.val.num_examples=512', timeout=600)
    val_loss = metric_series(tmp_path, 'val/loss')[150]
    assert val_loss < bigram, (val_loss, bigram)
    assert (tmp_path / 'loss_curve.png').stat().st_size > 1000
