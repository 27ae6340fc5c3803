"""data.prefetch: host batches built ahead by a thread are the synchronous batches, in order,
from the resumed step; producer errors surface in the loop; the thread always ends; and the
per-epoch permutation (jaxbig/data/shuffle.py) is grain's shuffle, element for element."""
import os
import signal
import threading
import time
import traceback

import grain
import ml_collections
import numpy as np
import pytest
from conftest import TINY_LM, metric_series, run_cli

from jaxbig import cli, data, run, train
from jaxbig import config as config_lib
from jaxbig.data import image_sources, prefetch, shuffle
from jaxbig.data.pipelines import lm

LM = 'experiments/lm.py'
SMALL = [*TINY_LM, '--config.model.num_layers=1', '--config.model.embed_dim=32',
         '--config.model.mlp_dim=64', '--config.data.seq_len=16', '--config.train.batch_size=8',
         '--config.train.checkpoint_every=0']


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == prefetch.THREAD_NAME and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not prefetch_threads(), 'a prefetch thread outlived its test'


@pytest.fixture(scope='module')
def pipe(tfds_dir):
    config = ml_collections.ConfigDict(dict(name='pystdlib', data_dir=tfds_dir, seq_len=16,
                                            pack=True))
    return data.build_pipeline(config, split='train', batch_size=4, seed=3)


def per_step(items, stacked):
    """[(call, batch)] -> {batch index: inputs}, unstacking [n, b, ...] calls."""
    out = {}
    for (step, n), batch in items:
        for j in range(n):
            out[step + j] = batch['inputs'][j] if stacked else batch['inputs']
    return out


# ----------------------------------------------------------------------------- the prefetcher

@pytest.mark.parametrize('depth', [0, 1, 2, 5])
@pytest.mark.parametrize('steps_per_call', [1, 4])
@pytest.mark.parametrize('first', [0, 7])  # 7: resumed after update 7
def test_batches_equal_synchronous_get_batch_in_order(pipe, depth, steps_per_call, first):
    stacked = steps_per_call > 1
    calls = list(train.call_plan(first, 30, steps_per_call, [10, 0]))
    with prefetch.Prefetcher(lambda c: train._host_batches(pipe, *c, stacked=stacked),
                             train.call_plan(first, 30, steps_per_call, [10, 0]),
                             depth=depth) as batches:
        items = list(batches)
    assert [call for call, _ in items] == calls
    assert max(n for _, n in calls) == steps_per_call  # stacked calls of up to 4 batches
    got = per_step(items, stacked)
    assert sorted(got) == list(range(first, 30))  # batch index i feeds update i + 1
    for i in range(first, 30):
        np.testing.assert_array_equal(got[i], pipe.get_batch(i)['inputs'])


def test_depth_bounds_how_far_ahead_and_zero_is_synchronous():
    produced, threads = [], set()

    def produce(call):
        produced.append(call)
        threads.add(threading.current_thread().name)
        return call * 10

    with prefetch.Prefetcher(produce, range(100), depth=2) as batches:
        assert next(batches) == (0, 0)
        time.sleep(0.5)  # the producer fills the queue (2) and builds one more, then waits
        assert produced == [0, 1, 2, 3]
        assert batches.alive
    assert threads == {prefetch.THREAD_NAME}

    produced.clear(), threads.clear()
    with prefetch.Prefetcher(produce, range(100), depth=0) as batches:
        assert not batches.alive and produced == []
        assert next(batches) == (0, 0) and next(batches) == (1, 10)
        time.sleep(0.1)
        assert produced == [0, 1]
    assert threads == {threading.current_thread().name}


class BatchError(RuntimeError):
    pass


def fail_at(k):
    def produce(call):
        if call == k:
            raise BatchError(f'no batch {call}')
        return call
    return produce


@pytest.mark.parametrize('depth', [0, 2])
def test_producer_error_surfaces_in_order_with_its_traceback(depth):
    got = []
    with pytest.raises(BatchError) as e:
        with prefetch.Prefetcher(fail_at(3), range(10), depth=depth) as batches:
            for call, batch in batches:
                got.append(batch)
    assert got == [0, 1, 2]  # everything before the failing call, then the error
    assert str(e.value) == 'no batch 3'  # the original exception object
    frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert frames[-1] == 'produce'  # raised where the producer raised it
    if depth:
        assert any(prefetch.THREAD_NAME in note for note in e.value.__notes__)


def test_close_stops_a_waiting_producer_and_an_exception_in_the_loop_ends_it():
    import itertools

    batches = prefetch.Prefetcher(lambda c: c, itertools.count(), depth=3)
    next(batches)
    t0 = time.monotonic()
    batches.close()
    assert time.monotonic() - t0 < 2 and not prefetch_threads()
    assert list(batches) == []  # closed: nothing more

    with pytest.raises(KeyError):
        with prefetch.Prefetcher(lambda c: c, itertools.count(), depth=2) as batches:
            for _ in batches:
                raise KeyError('in the loop body')
    assert not prefetch_threads()


@pytest.mark.parametrize('value', [-1, 1.5, True, '2'])
def test_bad_prefetch_values_are_one_line_config_errors(value):
    with pytest.raises(config_lib.ConfigError, match=r'^data\.prefetch=.*expected an int >= 0'):
        prefetch.validate(ml_collections.ConfigDict(dict(prefetch=value)))
    with pytest.raises(ValueError, match='prefetch depth'):
        prefetch.Prefetcher(lambda c: c, [], depth=value)


def test_every_experiment_has_the_key_and_the_cli_rejects_a_bad_value(tfds_dir, tmp_path):
    for experiment in ('lm.py', 'simclr.py', 'clip.py', 'finetune_image.py'):
        config = config_lib.load(os.path.join('experiments', experiment))
        assert config.data.prefetch == 2, experiment
    proc = run_cli('train', '--config', f'{LM}:steps=1', '--workdir', str(tmp_path / 'w'),
                   *TINY_LM, '--config.data.prefetch=-1', check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith('jaxbig: error: data.prefetch=-1')


# ----------------------------------------------------------------------------- one permutation

def grain_order(n, seed):
    """grain's shuffle of range(n), one element at a time (as the LM pipeline read it before)."""
    shuffled = grain.MapDataset.range(n).shuffle(seed=seed)
    return np.asarray([shuffled[k] for k in range(n)])


@pytest.mark.parametrize('n, seeds', [
    (1, (0, 5)), (2, (0, 1, 2**32 - 1)), (3, (0, 1, 2**32 - 1)), (17, (0, 1, 2**32 - 1)),
    (1797, (0, 1, 2**32 - 1, 123456789)),
    (65537, (123456789,)),  # n = 2**16 + 1: grain's order repeats an element; so must ours
])
def test_epoch_permutation_is_grains_order(n, seeds):
    for seed in seeds:
        np.testing.assert_array_equal(shuffle.epoch_permutation(n, seed), grain_order(n, seed))


@pytest.mark.parametrize('n', [1_000_003, 1_500_007])  # a tabulated block; walked in place
def test_epoch_permutation_of_a_large_epoch_at_sampled_positions(n):
    seed = 987654321
    order = shuffle.epoch_permutation(n, seed)
    assert np.array_equal(np.sort(order), np.arange(n))  # a permutation
    ds = grain.MapDataset.range(n).shuffle(seed=seed)
    for k in np.random.default_rng(0).integers(0, n, 300).tolist() + [0, n - 1]:
        assert order[k] == ds[k]


# std::vector<uint32_t> v(n); std::seed_seq{seed}.generate(v.begin(), v.end()), printed by
# a C++ program built with g++ (libstdc++), the reference grain's C++ code calls
SEED_SEQ = {
    (0, 4): [2963817213, 69796629, 1973464570, 532167439],
    (4294967295, 4): [3258260622, 2976084991, 227751652, 537413182],
    (123456789, 10): [2466100094, 3382080482, 2296593366, 2477927412, 1963485810, 1187039730,
                      664639981, 3374909695, 2258005714, 2255623526],
}


@pytest.mark.parametrize('seed, count', SEED_SEQ)
def test_seed_seq_keys_equal_libstdcxx(seed, count):
    assert shuffle.seed_seq_keys(seed, count) == SEED_SEQ[seed, count]


def test_index_order_is_the_elementwise_grain_order_across_epochs():
    n, seed = 1797, 5
    order = image_sources.IndexOrder(n, seed)
    rows = np.arange(2 * n - 40, 2 * n + 40)  # epochs 1 and 2
    ds = grain.MapDataset.range(n)
    before = {e: [ds.shuffle(seed=image_sources._epoch_seed(seed, e))[k] for k in range(n)]
              for e in (1, 2)}  # the expression IndexOrder._order evaluated before
    expected = [before[g // n][g % n] for g in rows.tolist()]
    np.testing.assert_array_equal(order.ids(rows), expected)


def test_lm_sequence_ids_are_the_elementwise_grain_order_across_an_epoch_end(pipe):
    n, b = pipe.num_sequences, pipe.global_batch_size
    i = n // b  # global rows i*b .. i*b + b - 1 cross into epoch 1 when b does not divide n
    assert n % b, 'pick a batch size that does not divide num_sequences'
    for batch in (0, 1, i, i + 1):
        expected = []
        for g in range(batch * b, batch * b + b):
            epoch, k = divmod(g, n)
            ds = grain.MapDataset.range(n).shuffle(seed=lm._epoch_seed(pipe.seed, epoch))
            expected.append(ds[k])
        np.testing.assert_array_equal(pipe.sequence_ids(batch), expected)


# ----------------------------------------------------------------------------- the real loop

def tiny_config(*overrides, steps=8):
    """The tiny LM for in-process runs, without evaluators (they play no part here)."""
    config = cli.load_config(f'{LM}:steps={steps}', [*SMALL, *overrides])
    config.evals = ml_collections.ConfigDict()
    return config


def test_prefetched_run_equals_synchronous_run_bit_for_bit(tfds_dir, tmp_path):
    results = {}
    for depth in (2, 0):
        workdir = str(tmp_path / f'prefetch{depth}')
        train.train(tiny_config(f'--config.data.prefetch={depth}', '--config.train.log_every=2',
                                '--config.train.steps_per_call=2'), workdir)  # calls of 2
        assert not prefetch_threads()  # gone once training ends
        losses = metric_series(workdir)
        results[depth] = losses, run.load_run(workdir).params
    (losses, params), (sync_losses, sync_params) = results[2], results[0]
    assert sorted(losses) == [2, 4, 6, 8]
    assert losses[8] < losses[2] - 0.3, losses  # it learns
    assert losses == sync_losses
    flat, sync_flat = dict(_leaves(params)), dict(_leaves(sync_params))
    assert flat.keys() == sync_flat.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key], sync_flat[key], err_msg=key)


def _leaves(tree):
    import jax

    return [(jax.tree_util.keystr(path), np.asarray(x))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)]


class FailingPipeline:
    """The real pipeline, whose batch `at` raises (or sends SIGTERM to this process)."""

    def __init__(self, pipe, at, action):
        self.pipe, self.at, self.action = pipe, at, action

    def get_batch(self, i):
        if i == self.at:
            if self.action == 'raise':
                raise BatchError(f'cannot read batch {i}')
            os.kill(os.getpid(), signal.SIGTERM)
        return self.pipe.get_batch(i)


def failing_pipelines(monkeypatch, at, action):
    build = train.data_lib.build_pipeline

    def build_failing(config, *, split, **kw):
        pipe = build(config, split=split, **kw)
        return FailingPipeline(pipe, at, action) if split == config.train_split else pipe

    monkeypatch.setattr(train.data_lib, 'build_pipeline', build_failing)


def test_pipeline_error_surfaces_in_the_training_loop(tfds_dir, tmp_path, monkeypatch):
    failing_pipelines(monkeypatch, 3, 'raise')
    workdir = str(tmp_path / 'w')
    with pytest.raises(BatchError) as e:
        train.train(tiny_config('--config.data.prefetch=2'), workdir)
    assert str(e.value) == 'cannot read batch 3'
    assert 'get_batch' in [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert not prefetch_threads()  # gone after the exception
    assert sorted(metric_series(workdir)) == [1, 2, 3]  # the updates before batch 3 ran


def test_sigterm_with_prefetch_saves_stops_and_ends_the_thread(tfds_dir, tmp_path, monkeypatch):
    failing_pipelines(monkeypatch, 6, 'sigterm')  # sent while the thread builds batch 6
    workdir = str(tmp_path / 'w')
    train.train(tiny_config('--config.data.prefetch=2', steps=12), workdir)
    assert not prefetch_threads()
    steps = sorted(metric_series(workdir))
    stopped = steps[-1]
    # batch 6 is built once the loop has taken batch 3 (2 wait in the queue) and before it
    # can take batch 6: the loop stops after the update in progress, one of 4 .. 7
    assert 4 <= stopped <= 7 and steps == list(range(1, stopped + 1)), steps
    assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]


@pytest.mark.slow
def test_pmap_on_two_devices_with_stacked_calls_is_unchanged_by_prefetch(tfds_dir, tmp_path):
    losses = {}
    for depth in (2, 0):
        workdir = tmp_path / f'p{depth}'
        run_cli('train', '--config', f'{LM}:steps=6', '--workdir', str(workdir), *SMALL,
                '--config.parallel.strategy=pmap', '--config.train.steps_per_call=2',
                f'--config.data.prefetch={depth}', devices=2)
        losses[depth] = metric_series(workdir)
    assert sorted(losses[2]) == list(range(1, 7)) and losses[2] == losses[0]
