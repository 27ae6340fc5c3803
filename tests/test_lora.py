"""LoRA: y = x W + (alpha/rank) x A B against NumPy for multi-dim and stacked kernels; B = 0
starts at the base model; merged plain weights equal base + adapters computed on the
activations; config errors; only adapters (and the new head) change in real train steps."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import metric_series, run_cli
from jaxbig import checkpoint, data, finetune, lora, losses, models, optim
from jaxbig import config as config_lib
from jaxbig import experiment
from jaxbig import step as step_lib
from jaxbig.commands import lora as lora_command
from jaxbig.config import ConfigError
from jaxbig.losses import classification as cls_loss
from jaxbig.models import layers

TINY_GPT = dict(name='gpt', vocab_size=64, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)


def lora_cfg(targets, rank=3, alpha=6.0):
    return ml_collections.ConfigDict(dict(targets=list(targets), rank=rank, alpha=alpha))


def randomize_b(params, seed=1):
    """Adapters with nonzero B (after init B = 0 hides every bug in A and the merge)."""
    flat = finetune.flatten(nn.unbox(params))
    rng = np.random.default_rng(seed)
    for path in flat:
        if path.startswith('lora/') and path.endswith('/b'):
            flat[path] = jnp.asarray(rng.normal(size=flat[path].shape), jnp.float32)
    return finetune.unflatten(flat)


def random_params(model, *inputs, seed=0):
    """Every parameter (adapters included) random normal * 0.3: no init to compile."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)['params'])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize('contract,features', [(1, (3, 4)), (2, (5,))])
def test_linear_layer_matches_numpy(contract, features):
    layer = layers.Linear(features, ('embed',) * (contract + len(features)), contract=contract)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, *(6, 2)[:contract])), jnp.float32)
    model = lora.wrap(layer, lora_cfg(['kernel']))
    params = random_params(model, x)
    p = jax.tree.map(np.asarray, params)
    w, a, b = p['kernel'], p['lora']['kernel']['a'], p['lora']['kernel']['b']
    assert a.shape == (*x.shape[2:], 3) and b.shape == (3, *features)
    xs = np.asarray(x)
    axes = (list(range(2, 2 + contract)), list(range(contract)))
    expected = np.tensordot(xs, w, axes) + 2.0 * np.tensordot(
        np.tensordot(xs, a, axes), b, ([2], [0])
    )
    np.testing.assert_allclose(jax.jit(model.apply)({'params': params}, x), expected, atol=1e-5)


def test_stacked_low_rank_product_matches_numpy_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 2, 5)), rng.normal(size=(3, 5, 6))  # [L, in.., r], [L, r, out]
    got = lora.low_rank_product(jnp.asarray(a), jnp.asarray(b), (3, 4, 2, 6))
    for layer in range(3):
        expected = (a[layer].reshape(8, 5) @ b[layer]).reshape(4, 2, 6)
        np.testing.assert_allclose(got[layer], expected, rtol=1e-5, atol=1e-5)


def classifier(scan_layers=True):
    return models.get_model(
        'classifier', backbone=dict(TINY_GPT, scan_layers=scan_layers), num_classes=3
    )


def test_init_starts_at_the_base_model_with_kaiming_a_and_logical_axes():
    tokens = jnp.zeros((1, 8), jnp.int32)
    model = lora.wrap(classifier(), lora_cfg(['.*attn/(query|out)/kernel', '.*mlp/up/kernel'], 8))
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)['params']
    specs = finetune.flatten(nn.get_partition_spec(boxed)['lora'])
    assert sorted(specs) == [f'encoder/layers/{k}/kernel/{ab}' for k in
                             ('attn/out', 'attn/query', 'mlp/up') for ab in 'ab']
    assert tuple(specs['encoder/layers/attn/out/kernel/a']) == ('layers', 'heads', 'kv', None)
    assert tuple(specs['encoder/layers/attn/out/kernel/b']) == ('layers', None, 'embed')
    shapes = finetune.flatten(nn.unbox(boxed['lora']))
    assert shapes['encoder/layers/attn/out/kernel/a'].shape == (2, 2, 8, 8)  # in = heads x kv
    assert shapes['encoder/layers/attn/query/kernel/b'].shape == (2, 8, 2, 8)
    # Values on one Linear layer contracting [6, 2] (fan_in 12): A ~ N(0, 1/12), B = 0.
    layer = layers.Linear((5,), ('heads', 'kv', 'embed'), contract=2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 2)), jnp.float32)
    model = lora.wrap(layer, lora_cfg(['kernel'], rank=64))
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x)['params'])
    a, b = np.asarray(params['lora']['kernel']['a']), np.asarray(params['lora']['kernel']['b'])
    assert a.shape == (6, 2, 64) and b.shape == (64, 5) and not b.any()
    assert abs(a.std() * np.sqrt(12) - 1) < 0.1 and abs(a.mean()) < 0.05
    both = jax.jit(lambda p: (model.apply({'params': p}, x),
                              layer.apply({'params': {'kernel': p['kernel']}}, x)))(params)
    np.testing.assert_array_equal(*both)


def adapters_on_activations(model, params, scale, tokens):
    """Base model + s * (x A) B added to each adapted layer's output by an interceptor: the
    unmerged form, independent of `lora.merge` (unscanned layers, so no stacked adapters)."""
    adapters = finetune.flatten(params['lora'])

    def add_adapter(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        m = context.module
        path = '/'.join((*m.scope.path, 'kernel')) if m.scope is not None else ''
        if context.method_name == '__call__' and path + '/a' in adapters:
            a, b, x = adapters[path + '/a'], adapters[path + '/b'], args[0]
            n_in = a.ndim - 1
            xa = jnp.tensordot(x, a, (list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))
            y = y + scale * jnp.tensordot(xa, b, 1)
        return y

    base = {k: v for k, v in params.items() if k != 'lora'}
    with nn.intercept_methods(add_adapter):
        return model.apply({'params': base}, tokens)


def test_merged_checkpoint_equals_base_plus_adapters(tmp_path):
    tokens = jnp.arange(48).reshape(3, 16) % 64
    cfg = lora_cfg(['.*attn/(query|value|out)/kernel', '.*mlp/down/kernel', 'head/kernel'])
    plain = classifier(scan_layers=False)
    model = lora.wrap(plain, cfg)
    params = random_params(model, tokens)
    run = tmp_path / 'run'
    saver = checkpoint.Checkpointer(str(run), keep=1, async_save=False)
    saver.save(7, {'params': params, 'step': np.int32(7)}, force=True)
    saver.close()
    config = {'model': {'name': 'classifier', 'backbone': dict(TINY_GPT, scan_layers=False),
                        'num_classes': 3}, 'lora': cfg.to_dict()}
    (run / 'config.json').write_text(json.dumps(config))
    argv = ['merge', '--workdir', str(run), '--out', str(tmp_path / 'merged')]
    assert lora_command.main(argv) == 0  # `jaxbig lora merge` / `python -m jaxbig.lora merge`
    merged, step = checkpoint.restore_params(str(tmp_path / 'merged'))
    assert step == 7 and 'lora' not in merged
    assert 'lora' not in json.loads((tmp_path / 'merged' / 'config.json').read_text())

    @jax.jit
    def outputs(params, merged):
        base = {k: v for k, v in params.items() if k != 'lora'}
        return (adapters_on_activations(plain, params, 2.0, tokens),
                plain.apply({'params': base}, tokens), plain.apply({'params': merged}, tokens),
                model.apply({'params': params}, tokens))

    reference, base_out, merged_out, wrapped_out = outputs(params, merged)
    assert np.abs(reference - base_out).max() > 1e-2  # the adapters do act
    np.testing.assert_allclose(merged_out, reference, atol=1e-5)
    np.testing.assert_allclose(wrapped_out, reference, atol=1e-5)
    with pytest.raises(ConfigError, match='no lora.targets'):  # no adapters: nothing to merge
        lora_command.merge_run(str(tmp_path / 'merged'), str(tmp_path / 'x'))


def test_config_errors_name_the_pattern():
    tokens = jnp.zeros((1, 8), jnp.int32)
    init = lambda cfg: jax.eval_shape(  # noqa: E731  (errors are raised while tracing)
        lora.wrap(classifier(), cfg).init, jax.random.PRNGKey(0), tokens)
    with pytest.raises(ConfigError, match=r"pattern '\.\*attn/qkv/kernel' matches no param"):
        init(lora_cfg(['.*attn/query/kernel', '.*attn/qkv/kernel']))
    with pytest.raises(ConfigError, match='matches encoder/embed/embedding, which is not the '
                                          'kernel of a Dense/Linear'):
        init(lora_cfg(['encoder/embed/.*']))
    with pytest.raises(ConfigError, match='lora.rank=0'):
        init(lora_cfg(['head/kernel'], rank=0))
    assert lora.wrap(classifier(), lora_cfg([])).__class__ is not lora.LoraModel  # off
    with pytest.raises(ConfigError, match="no 'lora' subtree"):
        params = jax.eval_shape(classifier().init, jax.random.PRNGKey(0), tokens)
        jax.eval_shape(lora.wrap(classifier(), lora_cfg(['head/kernel'])).apply, params, tokens)


def test_parameter_count_reduction_is_reported(caplog):
    caplog.set_level('INFO')
    model = lora.wrap(classifier(), lora_cfg(['.*attn/query/kernel'], rank=2))
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    # query kernels 2 x [16, 2, 8] = 512; adapters 2 x (16 x 2 + 2 x 16) = 128 = 25 %
    assert 'rank 2 on 1 kernels (512 parameters): 128 adapter parameters = 25.00%' in caplog.text


def test_expert_kernels_get_one_adapter_pair_per_expert():
    """LoRA on an MoE GPT's stacked expert kernels (scanned layers): A [L, E, in, r] and
    B [L, E, r, out] with the kernels' logical axes, and the adapted model's logits are the
    base model's with each expert's W_e + s A_e B_e (NumPy), the dense kernels untouched."""
    from jaxbig.models import gpt

    base = gpt.Model(**{k: v for k, v in TINY_GPT.items() if k != 'name'}, scan_layers=True,
                     moe={'experts': 4, 'experts_per_token': 2})
    model = lora.wrap(base, lora_cfg(['.*experts/(gate|up|down)/kernel'], rank=3, alpha=6.0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 8)), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)['params']
    specs = finetune.flatten(nn.get_partition_spec(boxed)['lora'])
    root = 'layers/mlp/experts'
    assert sorted(specs) == [f'{root}/{k}/kernel/{ab}' for k in ('down', 'gate', 'up')
                             for ab in 'ab']
    assert tuple(specs[f'{root}/gate/kernel/a']) == ('layers', 'expert', 'embed', None)
    assert tuple(specs[f'{root}/down/kernel/b']) == ('layers', 'expert', None, 'embed')
    params = randomize_b(random_params(model, tokens))
    shapes = {p: v.shape for p, v in finetune.flatten(params['lora']).items()}
    assert shapes[f'{root}/up/kernel/a'] == (2, 4, 16, 3)
    assert shapes[f'{root}/down/kernel/b'] == (2, 4, 3, 16)
    merged = finetune.flatten({k: v for k, v in params.items() if k != 'lora'})
    for kind in ('gate', 'up', 'down'):  # per layer and expert: W + s A B, in NumPy
        a = np.asarray(params['lora']['layers']['mlp']['experts'][kind]['kernel']['a'])
        b = np.asarray(params['lora']['layers']['mlp']['experts'][kind]['kernel']['b'])
        path = f'{root}/{kind}/kernel'
        merged[path] = np.asarray(merged[path]) + 2.0 * np.einsum('leir,lero->leio', a, b)
    got, want, plain = jax.jit(lambda p, q, r: (model.apply({'params': p}, tokens),
                                                base.apply({'params': q}, tokens),
                                                base.apply({'params': r}, tokens)))(
        params, finetune.unflatten(merged), {k: v for k, v in params.items() if k != 'lora'})
    got, want, plain = (x[0] if isinstance(x, tuple) else x for x in (got, want, plain))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-3  # the adapters act


@pytest.mark.slow  # ~40 s; tests/test_interop_train.py trains LoRA through the CLI by default
def test_lora_train_steps_change_only_adapters_and_head(tfds_dir):
    """Real updates with the text task's lora config: the backbone stays bit-identical."""
    config = experiment.resolve_auto(
        config_lib.load('experiments/finetune_text.py:mode=lora,steps=3,seq=32,batch=8'))
    config.model.backbone.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64)
    pipe = data.build_pipeline(config.data, split='train', batch_size=8, seed=0)
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    model = lora.wrap(models.get_model('classifier', **kwargs), config.lora)
    tx, schedule = optim.build_optimizer(config.optimizer, 3)
    state = step_lib.init_fn(model, tx, cls_loss.model_inputs(pipe.get_batch(0)), 0)()
    train_step = jax.jit(step_lib.make_train_step(
        model, losses.bind(cls_loss, config.loss), config.loss, tx, schedule))
    before = finetune.flatten(jax.device_get(state.params))
    for i in range(3):
        state, _ = train_step(state, pipe.get_batch(i))
    after = finetune.flatten(jax.device_get(state.params))
    changed = sorted(p for p in before if not np.array_equal(before[p], after[p]))
    assert changed == sorted(p for p in before if p.startswith(('lora/', 'head/'))), changed
    assert any(p.endswith('attn/query/kernel/b') for p in changed)


@pytest.mark.slow  # ~1.5 min: pretrain + CLI lora + merge + eval; the lora math and train step stay default
def test_lora_mode_through_the_cli_then_merge_and_eval(tfds_dir, tmp_path):
    lm = tmp_path / 'lm'
    tiny = ['--config.model.num_layers=2', '--config.model.embed_dim=64',
            '--config.model.num_heads=4', '--config.model.mlp_dim=128']
    run_cli('train', '--config', 'experiments/lm.py:steps=2,seq=32,batch=8', '--workdir',
            str(lm), *tiny, '--config.train.eval_every=0')
    ft = tmp_path / 'ft'
    proc = run_cli('train', '--config', f'experiments/finetune_text.py:init={lm},mode=lora,'
                   'steps=4,seq=32,batch=8,lr=0.05', '--workdir', str(ft),
                   '--config.train.eval_every=0', '--config.evals.val.num_examples=128')
    assert 'lora: rank 8 on 4 kernels' in proc.stderr  # query, value x 2 unscanned layers
    base, _ = checkpoint.restore_params(str(lm))
    after, step = checkpoint.restore_params(str(ft))
    assert step == 4
    flat = finetune.flatten(after)
    for path, value in finetune.flatten(base).items():
        assert np.array_equal(np.asarray(value), np.asarray(flat['encoder/' + path])), path
    assert any(np.any(np.asarray(v)) for p, v in flat.items() if p.endswith('kernel/b'))
    lora_command.merge_run(str(ft), str(tmp_path / 'merged'))
    run_cli('eval', '--workdir', str(tmp_path / 'merged'))  # the plain classifier
    with open(tmp_path / 'merged' / 'eval_results.jsonl') as f:
        merged = json.loads(f.readlines()[-1])
    assert merged['step'] == 4
    for key in ('val/accuracy', 'val/macro_f1'):
        assert merged[key] == pytest.approx(metric_series(ft, key)[4], abs=1e-6), key
