"""Magnitude pruning (jaxbig/pruning.py, jaxbig/commands/prune.py): exact counts (global, per leaf,
per scanned layer, with ties) against a NumPy lexsort; the default selection of the GPT, ViT
and ResNet; the Zhu & Gupta schedule against the formula; the optax transformation keeps
pruned weights exactly 0 under AdamW + weight decay and leaves kept updates untouched;
config errors; a real gradual run, resume and continued training; `jaxbig prune` whose
report is the evaluation of the checkpoint it wrote, which eval / generate / init_from read."""
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import REPO, TINY_LM, metric_series, run_cli

from jaxbig import cli, defaults, models, optim, pruning
from jaxbig import run as run_lib
from jaxbig.config import ConfigError


def numpy_keep(values: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Reference: False at the round(s * n) smallest |w| of the concatenation, ties by
    position (np.lexsort: by |w|, then index)."""
    flat = np.concatenate([np.abs(v).ravel() for v in values]).astype(np.float64)
    k = int(np.round(sparsity * flat.size))
    keep = np.ones(flat.size, bool)
    keep[np.lexsort((np.arange(flat.size), flat))[:k]] = False
    return np.split(keep, np.cumsum([v.size for v in values])[:-1])


def tied_params(seed=0):
    """Integer-valued weights (many ties), a stacked leaf, and leaves never pruned."""
    rng = np.random.default_rng(seed)
    ints = lambda *shape: rng.integers(-4, 5, size=shape).astype(np.float32)
    return {
        'layers': {'mlp': {'kernel': ints(3, 6, 5), 'bias': ints(3, 5)},
                   'norm': {'scale': ints(3, 6)}},
        'head': {'kernel': ints(5, 4), 'bias': ints(4)},
        'embed': {'embedding': ints(9, 6)},
    }


def flat_named(tree):
    return {pruning.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


KERNELS = ('head/kernel', 'layers/mlp/kernel')  # the default selection of tied_params


@pytest.mark.parametrize('sparsity', [0.0, 0.13, 0.5, 0.77, 0.95])
def test_global_masks_are_exact_and_smallest_with_ties(sparsity):
    params = tied_params()
    masks = flat_named(pruning.magnitude_masks(params, sparsity, scope='global'))
    ref = numpy_keep([params['head']['kernel'], params['layers']['mlp']['kernel']], sparsity)
    for name, expected in zip(KERNELS, ref):
        np.testing.assert_array_equal(np.asarray(masks[name]).ravel(), expected, err_msg=name)
    n = params['head']['kernel'].size + params['layers']['mlp']['kernel'].size
    assert sum(int((~np.asarray(masks[k])).sum()) for k in KERNELS) == round(sparsity * n)
    for name, m in masks.items():
        if name not in KERNELS:
            assert np.asarray(m).all(), name  # biases, norms, embeddings untouched


@pytest.mark.parametrize('sparsity', [0.3, 0.5, 0.9])
def test_layer_scope_prunes_each_leaf_and_each_scanned_layer(sparsity):
    params = tied_params(1)
    masks = pruning.magnitude_masks(params, sparsity, scope='layer')
    stacked = params['layers']['mlp']['kernel']
    for layer, m in zip(stacked, np.asarray(masks['layers']['mlp']['kernel'])):
        np.testing.assert_array_equal(m.ravel(), numpy_keep([layer], sparsity)[0])
    np.testing.assert_array_equal(np.asarray(masks['head']['kernel']).ravel(),
                                  numpy_keep([params['head']['kernel']], sparsity)[0])


def test_default_selection_kernels_only_on_gpt_vit_resnet():
    tok, img = np.zeros((1, 8), np.int32), np.zeros((1, 16, 16, 3), np.float32)
    cases = {
        'gpt': (models.get_model('gpt', vocab_size=32, num_layers=2, num_heads=2, embed_dim=16,
                                 mlp_dim=32, scan_layers=True, tie_embeddings=False), tok),
        'vit': (models.get_model('vit', patch_size=4, width=16, depth=2, num_heads=2,
                                 mlp_dim=32, num_classes=10), img),
        'resnet': (models.get_model('resnet', variant='resnet18', width=8, num_classes=10), img),
    }
    must = {'gpt': {'layers/attn/query/kernel', 'layers/mlp/down/kernel', 'layers/attn/out/kernel'},
            'vit': {'encoder/layers/mlp_in/kernel', 'head/kernel'},
            'resnet': {'encoder/stem/kernel', 'encoder/stage1_block0/shortcut/kernel'}}
    for name, (model, x) in cases.items():
        shapes = nn.unbox(jax.eval_shape(lambda m=model, x=x: m.init(
            jax.random.PRNGKey(0), x, train=False))['params'])
        chosen = {k for k, s in flat_named(pruning.select(shapes)).items() if s}
        names = flat_named(shapes)
        assert must[name] <= chosen, name
        for k in chosen:
            assert k.endswith('/kernel') and names[k].ndim >= 2, k
        for k in names:
            last = k.split('/')[-1]
            if 'embed' in k or 'norm' in k or last in ('bias', 'scale', 'cls', 'embedding'):
                assert k not in chosen, k  # norms, biases, embeddings (GPT unembed, ViT patches)
        assert chosen == {k for k, x in names.items() if k.endswith('kernel') and 'embed' not in k}


def test_targets_select_by_regex_and_errors_are_one_line():
    params = tied_params()
    sel = flat_named(pruning.select(params, ['layers/.*', 'head/bias']))
    assert {k for k, s in sel.items() if s} == {'layers/mlp/kernel', 'layers/mlp/bias',
                                               'layers/norm/scale', 'head/bias'}
    for targets, message in [(['.*attn.*'], "'.*attn.*' matches no trainable parameter"),
                             (['(unclosed'], 'is not a regex')]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            pruning.select(params, targets)
    with pytest.raises(ConfigError, match=r'sparsity=1.0: must be in \[0, 1\)'):
        pruning.magnitude_masks(params, 1.0)
    with pytest.raises(ConfigError, match='scope'):
        pruning.magnitude_masks(params, 0.5, scope='row')


def formula(t, s_i, s_f, t0, t_end, dt):
    """Zhu & Gupta 2017 eq. 1, held between mask updates: written out independently."""
    if t < t0:
        return 0.0
    updates = list(range(t0, t_end, dt)) + [t_end]
    last = max(u for u in updates if u <= t)
    if t_end == t0:
        return s_f
    return s_f + (s_i - s_f) * (1 - (last - t0) / (t_end - t0)) ** 3


@pytest.mark.parametrize('s_i, s_f, t0, t_end, dt', [
    (0.0, 0.8, 10, 110, 10), (0.1, 0.9, 0, 50, 7), (0.0, 0.5, 5, 5, 3), (0.2, 0.6, 3, 40, 1)])
def test_polynomial_schedule_matches_the_formula(s_i, s_f, t0, t_end, dt):
    steps = np.arange(0, t_end + 20)
    got = pruning.polynomial_sparsity(steps, s_i, s_f, t0, t_end, dt)
    np.testing.assert_allclose(got, [formula(t, s_i, s_f, t0, t_end, dt) for t in steps],
                               rtol=1e-12, atol=0)
    assert got[t_end] == s_f and (np.diff(got) >= 0).all()
    if t_end > t0:
        assert got[t0] == pytest.approx(s_i, abs=1e-15)


def opt_cfg(**prune):
    return ml_collections.ConfigDict(defaults.optimizer(
        name='adamw', lr=0.05, warmup_steps=0, weight_decay=0.1, clip_norm=0.0,
        prune=defaults.prune(**prune)))


@pytest.mark.parametrize('scope', ['global', 'layer'])
def test_transform_keeps_pruned_weights_zero_under_adamw_and_weight_decay(scope):
    sched = dict(initial_sparsity=0.1, begin_step=2, end_step=11, frequency=3)
    tx, _ = optim.build_optimizer(opt_cfg(sparsity=0.6, scope=scope, **sched), 20)
    inner, _ = optim.build_optimizer(opt_cfg(sparsity=0.0), 20)  # the same chain, no pruning
    params = jax.tree.map(jnp.asarray, tied_params(2))
    state = tx.init(params)
    assert isinstance(state[-1], pruning.PruneState)
    jax.tree.map(lambda a, b: None, state[:-1], inner.init(params))  # same inner structure

    @jax.jit
    def step(p, s, g):
        u, s2 = tx.update(g, s, p)
        ref, _ = inner.update(g, s[:-1], p)
        return optax.apply_updates(p, u), s2, u, ref, pruning.train_metrics(s2)

    rng = np.random.default_rng(0)
    zeros_before = None
    for t in range(16):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        params, state, upd, ref, metrics = step(params, state, grads)
        s = formula(t, 0.1, 0.6, 2, 11, 3)
        kernels = [np.asarray(params['head']['kernel']),
                   np.asarray(params['layers']['mlp']['kernel'])]
        if scope == 'global':  # 20 + 90 kernel weights
            expected = int(np.round(s * 110))
        else:  # the head, and each of the 3 stacked layers of 30
            expected = int(np.round(s * 20)) + 3 * int(np.round(s * 30))
        zeros = [k == 0 for k in kernels]
        assert sum(int(z.sum()) for z in zeros) == expected, (t, s)
        assert float(metrics['sparsity']) == pytest.approx(expected / 110, abs=1e-7)
        masks = flat_named(state[-1].masks)
        for name, z in zip(KERNELS, zeros):
            np.testing.assert_array_equal(~np.asarray(masks[name]), z)
            # kept weights get exactly the inner chain's update; pruned ones land on 0
            kept = np.asarray(masks[name])
            u, r = np.asarray(flat_named(upd)[name]), np.asarray(flat_named(ref)[name])
            np.testing.assert_array_equal(u[kept], r[kept])
        if zeros_before is not None:  # once pruned, pruned for good
            for z, zb in zip(zeros, zeros_before):
                assert (z >= zb).all()
        zeros_before = zeros
        for name in ('head/bias', 'layers/norm/scale', 'embed/embedding'):  # passed through
            np.testing.assert_array_equal(flat_named(upd)[name], flat_named(ref)[name])


def test_sparsity_zero_adds_nothing_and_old_configs_read_as_off():
    params = jax.tree.map(jnp.asarray, tied_params())
    cfg = opt_cfg(sparsity=0.0)
    old = ml_collections.ConfigDict({k: v for k, v in cfg.to_dict().items() if k != 'prune'})
    states = [optim.build_optimizer(c, 10)[0].init(params) for c in (cfg, old)]
    for s in states:
        assert not any(isinstance(x, pruning.PruneState) for x in jax.tree.leaves(
            s, is_leaf=lambda x: isinstance(x, pruning.PruneState)))
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
    assert pruning.train_metrics(states[0]) == {}


def test_freeze_partition_prunes_trainable_parameters_only():
    params = {'encoder': {'kernel': jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)))},
              'head': {'kernel': jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)))}}
    cfg = opt_cfg(sparsity=0.5)
    cfg.freeze = ['encoder/.*']
    tx, _ = optim.build_optimizer(cfg, 10)
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        u, state = tx.update(g, state, params)
        params2 = optax.apply_updates(params, u)
        np.testing.assert_array_equal(params2['encoder']['kernel'], params['encoder']['kernel'])
        params = params2
    assert int((np.asarray(params['head']['kernel']) == 0).sum()) == 15
    cfg.prune.targets = ['encoder/kernel']
    with pytest.raises(ConfigError, match='matches no trainable parameter'):
        optim.build_optimizer(cfg, 10)[0].init(params)


@pytest.mark.parametrize('kw, message', [
    (dict(sparsity=1.0), 'optimizer.prune.sparsity=1.0: must be in [0, 1)'),
    (dict(sparsity=-0.1), 'optimizer.prune.sparsity=-0.1'),
    (dict(sparsity=0.5, initial_sparsity=0.6), 'optimizer.prune.initial_sparsity=0.6'),
    (dict(sparsity=0.5, scope='row'), "optimizer.prune.scope='row'"),
    (dict(sparsity=0.5, begin_step=5, end_step=2), 'need 0 <= begin_step <= end_step'),
    (dict(sparsity=0.5, frequency=0), 'optimizer.prune.frequency=0'),
    (dict(sparsity=0.5, end_step=10), 'optimizer.prune.end_step=10: must be < train.steps=10'),
    (dict(sparsity=0.5, targets='.*kernel'), 'expected a list of regexes'),
    (dict(sparsity=0.5, targets=['(x']), 'is not a regex'),
])
def test_bad_prune_configs(kw, message):
    with pytest.raises(ConfigError) as e:
        optim.build_optimizer(opt_cfg(**kw), 10)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_partial_prune_sections_take_the_defaults():
    cfg = defaults.optimizer(prune=dict(sparsity=0.5, end_step=4))
    assert cfg['prune'] == {**defaults.prune(), 'sparsity': 0.5, 'end_step': 4}
    with pytest.raises(ConfigError, match=r"defaults.prune\(\): unknown keys \['sparsty'\]"):
        defaults.optimizer(prune=dict(sparsty=0.5))


# ----------------------------------------------------------------------------- real runs

SCHEDULE = dict(sparsity=0.5, begin_step=2, end_step=14, frequency=4)


def selected_zeros(params):
    sel = flat_named(pruning.select(params))
    flat = flat_named(params)
    return {k: np.asarray(flat[k]) == 0 for k, s in sel.items() if s}


@pytest.fixture(scope='module')
def gradual_run(tfds_dir, tmp_path_factory):
    """24 AdamW (weight decay 0.1) steps of the tiny LM, pruned 0 -> 50 % over updates
    2..14 every 4; checkpoints at 16 and 24."""
    workdir = str(tmp_path_factory.mktemp('prune') / 'run')
    run_cli('train', '--workdir', workdir, '--config', 'experiments/lm.py:steps=24', *TINY_LM,
            *[f'--config.optimizer.prune.{k}={v}' for k, v in SCHEDULE.items()],
            '--config.train.checkpoint_every=16')
    return workdir


def test_gradual_pruning_in_training(gradual_run):
    loss = metric_series(gradual_run, 'train/loss')
    assert np.mean([loss[s] for s in (22, 23, 24)]) < np.mean([loss[s] for s in (1, 2, 3)]) - 1
    p16, p24 = (run_lib.load_run(gradual_run, s).params for s in (16, 24))
    z16, z24 = selected_zeros(p16), selected_zeros(p24)
    n = sum(z.size for z in z24.values())
    assert sum(int(z.sum()) for z in z24.values()) == round(0.5 * n)  # exact
    for k in z16:  # 8 more AdamW + weight decay steps: the same weights, still exactly 0
        np.testing.assert_array_equal(z16[k], z24[k], err_msg=k)
    for k, x in flat_named(p24).items():
        if k not in z24:
            assert (np.asarray(x) != 0).all(), k  # embeddings, norms never pruned
    sparsity = metric_series(gradual_run, 'train/sparsity')  # row of step S: update S - 1
    sched = dict(initial=0.0, final=0.5, begin=2, end=14, frequency=4)
    for step, value in sparsity.items():
        s = formula(step - 1, 0.0, 0.5, 2, 14, 4)
        assert pruning.polynomial_sparsity(step - 1, **sched) == pytest.approx(s)
        assert value == pytest.approx(round(s * n) / n, abs=1e-7), step


@pytest.mark.slow
def test_resume_restores_the_masks(gradual_run, tmp_path):
    import shutil

    workdir = str(tmp_path / 'run')
    shutil.copytree(gradual_run, workdir)
    run_cli('train', '--workdir', workdir, '--config', 'experiments/lm.py:steps=28', *TINY_LM,
            *[f'--config.optimizer.prune.{k}={v}' for k, v in SCHEDULE.items()],
            '--config.train.checkpoint_every=16')
    before, after = (selected_zeros(run_lib.load_run(workdir, s).params) for s in (24, 28))
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def report_losses(stdout: str) -> tuple[float, float]:
    m = re.search(r'validation loss ([\d.]+) -> ([\d.]+)', stdout)
    return float(m.group(1)), float(m.group(2))


def eval_loss_of(proc) -> float:
    return float(re.search(r'val/loss\s+([\d.]+)', proc.stdout).group(1))


def test_prune_command_reports_the_checkpoint_it_writes(gradual_run, tmp_path):
    out = str(tmp_path / 'p80')
    proc = run_cli('prune', '--workdir', gradual_run, '--sparsity', '0.8', '--out', out)
    before, after = report_losses(proc.stdout)
    with open(os.path.join(out, 'pruned.json')) as f:
        report = json.load(f)
    assert (round(report['val_loss_before'], 6), round(report['val_loss_after'], 6)) == (
        before, after)
    # before: the source run's own final evaluation; after: `jaxbig eval` of the new workdir
    final_val = list(metric_series(gradual_run, 'val/loss').values())[-1]
    assert before == pytest.approx(final_val, rel=1e-5)
    assert after == pytest.approx(eval_loss_of(run_cli('eval', '--workdir', out)), rel=1e-5)
    assert after > before
    # exactly 80 % of the selection, the smallest magnitudes of the source (NumPy reference)
    source = flat_named(run_lib.load_run(gradual_run).params)
    pruned = flat_named(run_lib.load_run(out).params)
    names = sorted(selected_zeros(pruned))
    keep = numpy_keep([source[k] for k in names], 0.8)
    for k, expected in zip(names, keep):
        np.testing.assert_array_equal(pruned[k].ravel() != 0, expected, err_msg=k)
        np.testing.assert_array_equal(pruned[k].ravel()[expected], source[k].ravel()[expected])
    for k in source:
        if k not in names:
            np.testing.assert_array_equal(pruned[k], source[k], err_msg=k)
    n = sum(source[k].size for k in names)
    assert report['selected_zeros'] == round(0.8 * n) == sum((pruned[k] == 0).sum() for k in names)
    for row in report['layers']:
        assert row['zeros'] == int((pruned[row['path']] == 0).sum())
        assert f"{row['path']}" in proc.stdout


@pytest.mark.slow
def test_pruned_workdir_generates_and_trains_on_with_its_zeros(gradual_run, tmp_path):
    out, cont = str(tmp_path / 'p80'), str(tmp_path / 'cont')
    run_cli('prune', '--workdir', gradual_run, '--sparsity', '0.8', '--scope', 'layer',
            '--out', out, '--num-batches', '1')
    proc = run_cli('generate', '--workdir', out, '--prompt', 'def ', '--max-new-tokens', '5',
                   '--temperature', '0')
    assert proc.stdout.startswith('def ')
    run_cli('train', '--workdir', cont, '--config', f'experiments/lm.py:steps=6,init={out}',
            *TINY_LM, '--config.optimizer.prune.sparsity=0.8',
            '--config.optimizer.prune.scope=layer')
    a, b = selected_zeros(run_lib.load_run(out).params), selected_zeros(
        run_lib.load_run(cont).params)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].mean() == pytest.approx(0.8, abs=1e-3)  # per layer


def test_prune_command_errors_write_nothing(gradual_run, tmp_path, capsys):
    out = str(tmp_path / 'new')
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-m', 'jaxbig', 'prune', '--workdir', gradual_run,
                           '--sparsity', '1.0', '--out', out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'jaxbig: error: --sparsity 1.0: must be in [0, 1)'
    for argv, message in [
        (['--sparsity', '0.5', '--targets', 'nothing/.*'], "'nothing/.*' matches no"),
        (['--sparsity', '0.5', '--scope', 'row'], "invalid choice: 'row'"),
    ]:
        code = None
        try:
            code = cli.main(['prune', '--workdir', gradual_run, '--out', out, *argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert message in err, err
    assert cli.main(['prune', '--workdir', gradual_run, '--sparsity', '0.5',
                     '--out', gradual_run]) == 2
    assert 'is the source workdir' in capsys.readouterr().err
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.jaxbig-prune')]
