"""benchmarks/research.py: the bits-per-byte baselines against independent computations
(scipy.stats.entropy, a Counter-based bigram model, lzma's own xz filter chain), the streams
being the bytes the LM pipeline packs, the resumable entry logic (skip, --force, nothing
stored after a failure), --list, and the report written from stored JSON alone."""
import collections
import importlib.util
import json
import lzma
import math
import os
import sys
import zlib

import numpy as np
import pytest
import scipy.stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'benchmarks')


def _load_script():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location('research_script',
                                                  os.path.join(BENCH, 'research.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


research = _load_script()
baselines, harness, report = research.baselines, research.harness, research.report


@pytest.fixture
def streams():
    rng = np.random.default_rng(0)
    text = b'def f(x):\n    return x + 1\n\x00'
    train = np.frombuffer(text * 40, np.uint8).copy()
    train[rng.integers(0, len(train), 50)] = rng.integers(0, 256, 50)  # some noise bytes
    val = np.frombuffer(b'class A:\n    pass\n\x00' * 7 + b'\xff', np.uint8)
    return train, val


def test_empirical_entropy_matches_scipy(streams):
    _, val = streams
    counts = np.bincount(val, minlength=256)
    assert baselines.empirical_entropy_bpb(val) == pytest.approx(
        scipy.stats.entropy(counts, base=2), rel=1e-12)


def test_unigram_is_entropy_plus_kl_to_smoothed_train(streams):
    train, val = streams
    p = np.bincount(val, minlength=256) / len(val)
    q = np.bincount(train, minlength=256) + 1.0  # add-one smoothed train frequencies
    q /= q.sum()
    cross = scipy.stats.entropy(p, base=2) + scipy.stats.entropy(p, q, base=2)
    assert baselines.unigram_bpb(train, val) == pytest.approx(cross, rel=1e-10)
    # val holds 0xff, never seen in train: still finite (add-one), and above val's entropy
    assert math.isfinite(cross) and cross > baselines.empirical_entropy_bpb(val)


def test_bigram_matches_counter_reference(streams):
    train, val = streams
    pairs = collections.Counter(zip([0, *train[:-1].tolist()], train.tolist()))
    firsts = collections.Counter([0, *train[:-1].tolist()])
    bits = [-math.log2((pairs[(a, b)] + 1) / (firsts[a] + 256))
            for a, b in zip([0, *val[:-1].tolist()], val.tolist())]
    assert baselines.bigram_bpb(train, val) == pytest.approx(np.mean(bits), rel=1e-10)
    assert baselines.bigram_bpb(train, val) < baselines.unigram_bpb(train, val)


def test_compressors_on_known_strings():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    repeated = b'abcdefgh' * 4000
    for codec in ('zlib', 'xz'):
        assert baselines.compressed_bpb(noise, codec) > 7.9  # random bytes do not compress
        assert baselines.compressed_bpb(repeated, codec) < 0.1
    text = (b'import os\nprint(os.getcwd())\n' * 50) + noise[:500]
    assert baselines.compressed_bpb(text, 'zlib') == 8 * len(zlib.compress(text, 9)) / len(text)
    xz_9e = lzma.compress(text, format=lzma.FORMAT_XZ,
                          filters=[{'id': lzma.FILTER_LZMA2, 'preset': 9 | lzma.PRESET_EXTREME}])
    assert baselines.compressed_bpb(text, 'xz') == 8 * len(xz_9e) / len(text)
    with pytest.raises(ValueError, match='codec'):
        baselines.compressed_bpb(text, 'gzip')


def test_val_stream_is_what_the_lm_pipeline_packs(tfds_dir):
    import ml_collections

    from jaxbig.data.pipelines import lm

    data_cfg = research.lm_data_config()  # data_dir '' = $TFDS_DATA_DIR = tfds_dir
    _, val = research.lm_streams()
    seq = 64
    pipe = lm.build_pipeline(ml_collections.ConfigDict({**data_cfg.to_dict(), 'seq_len': seq}),
                             split=data_cfg.val_split, batch_size=4, seed=0)
    batch = pipe.get_batch(3)
    for row, k in enumerate(pipe.sequence_ids(3).tolist()):
        window = val[k * (seq + 1):(k + 1) * (seq + 1)]
        np.testing.assert_array_equal(batch['inputs'][row], window[:-1])
        np.testing.assert_array_equal(batch['targets'][row], window[1:])
    assert research.full_val_batches(seq, 4) == len(val) // (seq + 1) // 4


def test_diagnosis_scores_against_loops():
    clip_diagnosis = research.clip_diagnosis
    rng = np.random.default_rng(2)
    image, prompts = rng.normal(size=(5, 3)), rng.normal(size=(4, 6, 3))
    ensemble, best = clip_diagnosis.scores(image, prompts)

    def unit(v):
        return v / np.linalg.norm(v)

    for i in range(5):
        for c in range(4):
            mean = unit(np.mean([unit(p) for p in prompts[c]], axis=0))
            assert ensemble[i, c] == pytest.approx(unit(image[i]) @ mean)
            assert best[i, c] == pytest.approx(max(unit(image[i]) @ unit(p) for p in prompts[c]))
    within, between = clip_diagnosis.prompt_cosines(prompts)
    pairs = [(c, t, s) for c in range(4) for t in range(6) for s in range(6) if t != s]
    assert within == pytest.approx(np.mean([unit(prompts[c, t]) @ unit(prompts[c, s])
                                            for c, t, s in pairs]))
    pairs = [(c, d, t) for c in range(4) for d in range(4) for t in range(6) if c != d]
    assert between == pytest.approx(np.mean([unit(prompts[c, t]) @ unit(prompts[d, t])
                                             for c, d, t in pairs]))


def _fake_run(name, tokens_per_step=64):
    curve = [{'step': s, 'train/loss': 3.0 / s, 'val/bits_per_byte': 4.0 / s,
              'zero_shot/accuracy': 0.1 * s, 'train/i2t_accuracy': 0.05 * s} for s in (1, 2, 4)]
    return dict(name=name, command=f'jaxbig train --config experiments/x.py --workdir runs/{name}',
                wall_s=61.0, cpu_s=100.0, resumed=False, seed=0, final=harness.final_metrics(curve),
                curve=curve, tokens=4 * tokens_per_step, seq=8, batch=8, steps=4,
                val_bits_per_byte=1.0)


def test_run_entry_stores_then_skips_and_force_reruns(tmp_path):
    calls = []

    def entry(ctx):
        calls.append(ctx.entry)
        return dict(figures={'x': len(calls)}, runs=[])

    ctx = harness.Context(root=str(tmp_path / 'runs'), results_dir=str(tmp_path / 'results'))
    result, ran = harness.run_entry('demo', entry, ctx)
    assert ran and calls == ['demo'] and result['figures'] == {'x': 1}
    stored = json.loads((tmp_path / 'results' / 'demo.json').read_text())
    assert stored['entry'] == 'demo' and stored['figures'] == {'x': 1} and 'wall_s' in stored
    result, ran = harness.run_entry('demo', entry, ctx)  # stored: skipped
    assert not ran and calls == ['demo'] and result == stored
    (tmp_path / 'runs' / 'demo' / 'old').mkdir(parents=True)
    result, ran = harness.run_entry('demo', entry, ctx, force=True)
    assert ran and result['figures'] == {'x': 2} and not (tmp_path / 'runs' / 'demo').exists()


def test_failed_entry_stores_nothing(tmp_path):
    def entry(ctx):
        raise RuntimeError('training failed')

    ctx = harness.Context(root=str(tmp_path), results_dir=str(tmp_path / 'results'))
    with pytest.raises(RuntimeError, match='training failed'):
        harness.run_entry('broken', entry, ctx)
    assert harness.load_results(str(tmp_path / 'results')) == {}


def test_list_names_every_entry(capsys):
    assert research.main(['--list']) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(research.ENTRIES)


def test_unknown_entry_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        research.main(['no_such_entry'])
    assert exit_info.value.code == 2
    assert "unknown entry 'no_such_entry'" in capsys.readouterr().err


def test_report_from_stored_json(tmp_path):
    ctx = harness.Context(root=str(tmp_path / 'runs'), results_dir=str(tmp_path / 'res'))
    bl = dict(figures={'unigram': 5.0, 'zlib_9': 1.6, 'xz_9e': 1.35}, train_bytes=1000,
              val_bytes=100, smoothing='add-one')
    harness.run_entry('lm_baselines', lambda c: bl, ctx)
    harness.run_entry('lm_recipe_short', lambda c: dict(runs=[_fake_run('recipe')]), ctx)
    harness.run_entry('clip_zero_shot', lambda c: dict(runs=[_fake_run('clip')]), ctx)
    diag = {f'{rule}_{k}': 0.5 for rule in ('ensemble', 'max_template')
            for k in ('accuracy', 'colour', 'shape')}
    diag.update(ensemble_shape=0.25, within_class_cos=0.35, between_class_cos=0.6)
    harness.run_entry('clip_diagnosis', lambda c: dict(figures={'clip_zero_shot/clip': diag}), ctx)
    out = tmp_path / 'RESULTS.md'
    assert research.main(['--report', '--results-dir', str(ctx.results_dir),
                          '--out', str(out)]) == 0
    text = out.read_text()
    assert '| zlib -9 (whole validation stream) | 1.600 | 1.109 |' in text
    assert '`jaxbig train --config experiments/x.py --workdir runs/recipe`' in text
    assert '| recipe | 256 | 1.000 | 0.693 | -0.600 (beats) | 1.0 min | 100 s | 0 |' in text
    assert '| clip | 40.0 % |' in text  # the last zero-shot value of its curve
    assert ('| clip_zero_shot/clip | 50.0 % | 50.0 % | 25.0 % | 50.0 % | 50.0 % | 50.0 % | '
            '0.35 | 0.60 |') in text
    for entry in ('lm_recipe_short', 'clip_zero_shot'):
        assert (tmp_path / 'res' / f'{entry}.png').stat().st_size > 1000
        assert f'![{entry}](res/{entry}.png)' in text


@pytest.mark.slow
def test_quick_lm_entry_runs_the_cli_and_reads_the_run_back(tfds_dir, tmp_path, capsys):
    from jaxbig import writers

    root = tmp_path / 'runs'
    assert research.main(['--quick', 'lm_recipe_short', '--workdir-root', str(root)]) == 0
    results = root / 'quick' / 'results'
    stored = json.loads((results / 'lm_recipe_short.json').read_text())
    (run,) = stored['runs']
    workdir = root / 'quick' / 'lm_recipe_short' / 'recipe'
    rows = writers.read_metrics(str(workdir))
    assert run['final']['val/bits_per_byte'] == rows[-1]['val/bits_per_byte']
    assert run['val_bits_per_byte'] == stored['figures']['val_bits_per_byte']
    assert run['command'].startswith('jaxbig train --config experiments/lm.py:size=tiny,steps=8')
    assert run['seed'] == 0 and run['wall_s'] > 0 and run['tokens'] == 8 * 8 * 32
    assert (results / 'RESULTS_RESEARCH.md').exists() and (results / 'lm_recipe_short.png').exists()
    capsys.readouterr()
    assert research.main(['--quick', 'lm_recipe_short', '--workdir-root', str(root)]) == 0
    assert 'stored, skipped' in capsys.readouterr().out
    assert json.loads((results / 'lm_recipe_short.json').read_text()) == stored


def test_timing_accumulates_over_invocations(tmp_path):
    path = str(tmp_path / 'run.timing.json')
    assert harness.add_timing(path, 10.0, 4.0) == [{'wall_s': 10.0, 'cpu_s': 4.0}]
    timing = harness.add_timing(path, 2.5, 1.25)
    assert [t['wall_s'] for t in timing] == [10.0, 2.5]
    assert json.loads(open(path).read()) == timing


def test_power_law_fit_recovers_a_known_law():
    tokens = np.linspace(1e6, 2e7, 12)
    bits = 1.2 + 2.0 * (tokens / 1e6) ** -0.4
    a, b, c = report.power_law_fit(tokens, bits)
    assert (a, b, c) == pytest.approx((1.2, 2.0, 0.4), rel=1e-3)
    run = _fake_run('recipe')
    run['curve'] = [{'step': s, 'train/loss': (1.0 + 3.0 * s ** -0.5) * math.log(2)}
                    for s in range(2, 40, 3)]
    (line, _) = report.extrapolation({'runs': [run]}, full=1000 * 64, warmup=5)
    # 64 tokens a step: at step 1000 the law gives 1 + 3 / sqrt(1000) bits/byte
    assert f'{1 + 3 / math.sqrt(1000):.3f} bits/byte at its schedule\'s end' in line
    assert report.extrapolation({'runs': [run]}, full=64000, warmup=35) == []  # too few points


# ------------------------------------------------------------------ grid entries (mean +- std)

grid = research.grid


def _record(name, seed, value, cpu=10.0):
    return dict(name=name, seed=seed, command=f'jaxbig train {name}', cpu_s=cpu, wall_s=2 * cpu,
                final={'val/accuracy': value})


def test_grid_cell_is_numpy_mean_and_sample_std():
    values = [0.71, 0.74, 0.80]
    c = grid.cell('probe', 0.01, [_record(f'r{i}', i, v) for i, v in enumerate(values)],
                  'val/accuracy')
    assert c['mean'] == pytest.approx(np.mean(values))
    assert c['std'] == pytest.approx(np.std(values, ddof=1))
    assert (c['seeds'], c['cpu_s'], c['command']) == ([0, 1, 2], 30.0, 'jaxbig train r0')
    single = grid.cell('x', 1, [_record('a', 0, 0.5)], 'val/accuracy')
    assert single['std'] is None and single['mean'] == 0.5
    missing = grid.cell('x', 1, [_record('a', 0, None), _record('b', 1, 0.4)], 'val/accuracy')
    assert missing['mean'] == 0.4 and missing['std'] is None
    given = grid.cell('pixels', 0.1, [], 'val/accuracy', values=[0.9, 0.92])
    assert given['mean'] == pytest.approx(0.91) and given['command'] == ''


def test_grid_report_table_and_plots(tmp_path):
    cells = [grid.cell(arm, x, [_record(f'{arm}{x}{s}', s, v + s / 100) for s in range(3)],
                       'val/accuracy')
             for arm, v in (('probe', 0.7), ('scratch', 0.3)) for x in (0.01, 0.1, 1.0)]
    result = dict(grid.grid_result('val/accuracy', 'labelled fraction', cells, [], x_log=True),
                  entry='label_efficiency', date='2026-12-02', machine='m', wall_s=60.0)
    text = report.markdown({'label_efficiency': result}, {})
    assert '| probe | 0.01 | 71.0 +- 1.0 | 70.0 / 71.0 / 72.0 | 30 s |' in text
    assert '`jaxbig train scratch0.10`' in text
    assert grid.plot(result, str(tmp_path / 'numeric.png'))
    categorical = dict(result, cells=[dict(c, x=m) for c, m in zip(cells, 'abcabc')])
    assert grid.plot(categorical, str(tmp_path / 'bars.png'))
    for name in ('numeric.png', 'bars.png'):
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not grid.plot(dict(result, cells=[]), str(tmp_path / 'none.png'))


def test_batch_sweep_runs_equal_examples_and_reuses_the_recipe_runs(tmp_path):
    """Every batch size gets SWEEP_EXAMPLES // batch steps; at the recipe's own batch the
    clip_zero_shot entry's stored runs are reused, not retrained."""
    stored = {'runs': [_record(loss, 0, None) | {'final': {'zero_shot/accuracy': acc}}
                       for loss, acc in (('clip', 0.5), ('siglip', 0.3))]}
    (tmp_path / 'clip_zero_shot.json').write_text(json.dumps(stored))
    calls = []

    class Ctx:
        quick, results_dir = False, str(tmp_path)

        def train(self, name, spec, overrides):
            calls.append((name, spec, overrides))
            return _record(name, 0, None) | {'final': {'zero_shot/accuracy': 0.1}}

    result = research.clip_batch_sweep(Ctx())
    batches = research.SWEEP_BATCHES
    assert [c['x'] for c in result['cells']] == [*batches, *batches]
    trained = {name for name, _, _ in calls}
    assert 'clip_batch128' not in trained and 'siglip_batch128' not in trained
    assert len(calls) == 2 * (len(batches) - 1)
    for name, spec, overrides in calls:
        batch = int(name.split('batch')[1])
        assert f'steps={research.SWEEP_EXAMPLES // batch},batch={batch}' in spec
        assert f'--config.train.eval_every={research.SWEEP_EXAMPLES // batch}' in overrides
    reused = {c['arm']: c['mean'] for c in result['cells'] if c['x'] == 128}
    assert reused == {'clip': 0.5, 'siglip': 0.3}
