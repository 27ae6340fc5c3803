"""Masked LM: BERT's masking statistics, a loss over the chosen positions only (against
NumPy), deterministic eval masking, the BERT forward against a NumPy reference (post / pre
norm, learned / rotary positions, padding), a real `experiments/mlm.py` run whose loss falls,
fine-tuning from it (linear_probe bit-identical backbone, lora adapters, features), Hugging
Face BERT import against transformers (1e-4), and the error paths."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import metric_series, run_cli
from scipy import special, stats

from jaxbig import checkpoint, finetune
from jaxbig.aggregate import values
from jaxbig.config import ConfigError, load
from jaxbig.losses import masked_lm
from jaxbig.models import bert

CFG = ml_collections.ConfigDict(masked_lm.section())  # bytes: mask 256, random from 256


def _tokens(rng, shape, pad_from=None):
    """Byte ids [B, T] and a mask with the rows' tails padded from `pad_from` on."""
    tokens = rng.integers(0, 256, shape).astype(np.int32)
    mask = np.ones(shape, np.float32)
    if pad_from is not None:
        for r, start in enumerate(pad_from):
            mask[r, start:] = 0
    return tokens, mask


def test_masking_statistics_match_bert_recipe():
    """Over 100 batches of 32 x 128: 15 % of the real positions chosen, of those 80 % [MASK],
    10 % a random byte, 10 % unchanged (within 1 %), padding never chosen, unchosen
    positions never changed, random bytes uniform over the 256 (chi-square)."""
    rng = np.random.default_rng(0)
    tokens, mask = _tokens(rng, (32, 128), pad_from=rng.integers(64, 129, 32))
    valid = jnp.asarray(mask > 0)
    corrupt = jax.jit(lambda k: masked_lm.corrupt(k, jnp.asarray(tokens), valid, rate=0.15,
                                                  mask_id=256, random_ids=256))
    counts = np.zeros(4)  # chosen, [MASK], random (differs), unchanged
    random_bytes = np.zeros(256)
    for i in range(100):
        out, chosen = (np.asarray(x) for x in corrupt(jax.random.PRNGKey(i)))
        assert not chosen[mask == 0].any()
        assert (out[~chosen] == tokens[~chosen]).all()
        is_mask = chosen & (out == 256)
        is_random = chosen & (out != 256) & (out != tokens)
        counts += [chosen.sum(), is_mask.sum(), is_random.sum(),
                   (chosen & (out == tokens)).sum()]
        random_bytes += np.bincount(out[is_random], minlength=256)
    chosen_rate = counts[0] / (100 * mask.sum())
    mask_frac, random_frac, keep_frac = counts[1:] / counts[0]
    assert abs(chosen_rate - 0.15) < 0.01 * 0.15, chosen_rate
    # A random draw equals the original byte 1/256 of the time: it counts as unchanged.
    np.testing.assert_allclose([mask_frac, random_frac, keep_frac],
                               [0.8, 0.1 * 255 / 256, 0.1 + 0.1 / 256], atol=0.01)
    # Uniform over the bytes (a drawn byte equal to the original is not seen: near uniform)
    assert stats.chisquare(random_bytes).pvalue > 1e-3


def _fake_apply(logits, seen):
    """An apply_fn returning fixed logits and recording the ids and mask it was given."""
    def apply(variables, ids, mask, *, train, rngs):
        seen.append((np.asarray(ids), np.asarray(mask)))
        return jnp.asarray(logits)
    return apply


def test_loss_is_cross_entropy_on_chosen_positions_only():
    """Loss = mean over chosen positions of -log softmax(logits)[original id] (NumPy);
    logits at unchosen positions do not change it, at a chosen one they do."""
    rng = np.random.default_rng(1)
    tokens, mask = _tokens(rng, (4, 48), pad_from=[48, 30, 40, 10])
    batch = {'inputs': tokens, 'mask': mask}
    logits = rng.normal(size=(4, 48, 257)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    _, chosen = masked_lm.corrupt_rows(  # each row its own key: fold_in(key, its row index)
        jax.random.fold_in(key, masked_lm.STREAM), jnp.arange(len(tokens)), jnp.asarray(tokens),
        jnp.asarray(mask > 0), rate=0.15, mask_id=256, random_ids=256)
    chosen = np.asarray(chosen)
    assert 5 < chosen.sum() < chosen.size
    seen = []
    loss, metrics = masked_lm.loss_fn(_fake_apply(logits, seen), {}, batch, {'dropout': key},
                                      CFG, train=True)
    logp = special.log_softmax(logits.astype(np.float64), -1)
    nll = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), nll[chosen].mean(), rtol=1e-5)
    correct = logits.argmax(-1) == tokens
    np.testing.assert_allclose(float(metrics['masked_accuracy']), correct[chosen].mean())
    np.testing.assert_allclose(float(metrics['chosen_fraction']), chosen.sum() / mask.sum())
    ids, model_mask = seen[0]
    assert (ids[~chosen] == tokens[~chosen]).all() and (ids[chosen] == 256).mean() > 0.5
    np.testing.assert_array_equal(model_mask, mask)
    other = logits.copy()
    other[~chosen] = rng.normal(size=other[~chosen].shape) * 10
    loss2, _ = masked_lm.loss_fn(_fake_apply(other, []), {}, batch, {'dropout': key}, CFG)
    assert float(loss2) == float(loss)
    r, t = np.argwhere(chosen)[0]
    other[r, t, tokens[r, t]] += 5.0
    loss3, _ = masked_lm.loss_fn(_fake_apply(other, []), {}, batch, {'dropout': key}, CFG)
    assert float(loss3) < float(loss)


def test_eval_masking_is_fixed_per_batch_and_train_masking_follows_the_step_rng():
    rng = np.random.default_rng(2)
    logits = np.zeros((8, 64, 257), np.float32)
    batches = [dict(zip(('inputs', 'mask'), _tokens(rng, (8, 64)))) for _ in range(2)]

    def ids(batch, rngs):
        seen = []
        masked_lm.loss_fn(_fake_apply(logits, seen), {}, batch, rngs, CFG, train=bool(rngs))
        return seen[0][0] != batch['inputs']  # the changed positions

    a, again, b = ids(batches[0], {}), ids(batches[0], {}), ids(batches[1], {})
    np.testing.assert_array_equal(a, again)  # every evaluation masks a batch the same way
    assert (a != b).any()  # another batch, another pattern
    k0, k1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    np.testing.assert_array_equal(ids(batches[0], {'dropout': k0}),
                                  ids(batches[0], {'dropout': k0}))
    assert (ids(batches[0], {'dropout': k0}) != ids(batches[0], {'dropout': k1})).any()


@pytest.mark.parametrize('change, message', [
    (dict(mask_id=-1), r'loss.mask_id=-1: set the \[MASK\] token id'),
    (dict(mask_id=300), r'loss.mask_id=300 / random_ids=256: outside the model vocabulary'),
    (dict(rate=0.0), r'loss.rate=0.0: must be in \(0, 1\]'),
    (dict(mask_frac=0.95), 'loss.mask_frac=0.95, loss.random_frac=0.1: must be >= 0'),
])
def test_loss_config_errors(change, message):
    batch = dict(zip(('inputs', 'mask'), _tokens(np.random.default_rng(0), (2, 8))))
    cfg = ml_collections.ConfigDict({**masked_lm.section(), **change})
    with pytest.raises(ConfigError, match=message):
        masked_lm.loss_fn(_fake_apply(np.zeros((2, 8, 257), np.float32), []), {}, batch, {},
                          cfg)
    with pytest.raises(ConfigError, match=r"2-D outputs \(2, 16\).*set model.head='mlm'"):
        masked_lm.loss_fn(lambda *a, **k: jnp.zeros((2, 16)), {}, batch, {}, CFG)


# ----------------------------------------------------------------------------- the model

def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p['scale'] + p[
        'bias']


def _rope(x, base=10000.0):
    """x [b, t, h, d], half-split rotary at positions 0..t-1."""
    half = x.shape[-1] // 2
    angle = np.arange(x.shape[1])[:, None] * base ** (-np.arange(half) * 2.0 / x.shape[-1])
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def numpy_bert(p, m, tokens, mask, types):
    """Reference forward of an unscanned bert.Model: (MLM logits [B, T, V], features)."""
    gelu = lambda x: 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
    emb = p['embed']
    x = emb['word']['embedding'][tokens] + emb['type_embedding'][types]
    valid = mask > 0
    if m.class_token:
        x = np.concatenate([np.broadcast_to(emb['cls'], (len(x), 1, m.width)), x], 1)
        valid = np.concatenate([np.ones((len(x), 1), bool), valid], 1)
    if m.positions == 'learned':
        x = x + emb['pos_embedding'][: x.shape[1]]
    if m.norm == 'post':
        x = _ln(x, p['embed_norm'], m.norm_eps)
    for i in range(m.depth):
        layer = p['encoder'][f'layers_{i}']
        a = layer['attn']
        h = _ln(x, layer['attn_norm'], m.norm_eps) if m.norm == 'pre' else x
        q, k, v = (np.einsum('bte,ehd->bthd', h, a[n]['kernel']) + a[n]['bias']
                   for n in ('query', 'key', 'value'))
        if m.positions == 'rope':
            q, k = _rope(q), _rope(k)
        s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
        s = np.where(valid[:, None, None, :], s, -np.inf)
        o = np.einsum('bhqk,bkhd->bqhd', special.softmax(s, -1), v)
        x = x + np.einsum('bqhd,hde->bqe', o, a['out']['kernel']) + a['out']['bias']
        x = _ln(x, layer['attn_norm'], m.norm_eps) if m.norm == 'post' else x
        h = _ln(x, layer['mlp_norm'], m.norm_eps) if m.norm == 'pre' else x
        h = gelu(h @ layer['mlp_in']['kernel'] + layer['mlp_in']['bias'])
        x = x + h @ layer['mlp_out']['kernel'] + layer['mlp_out']['bias']
        x = _ln(x, layer['mlp_norm'], m.norm_eps) if m.norm == 'post' else x
    if m.norm == 'pre':
        x = _ln(x, p['encoder']['final_norm'], m.norm_eps)
    if m.pool == 'cls':
        feats = x[:, 0]
    else:
        feats = (x * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    if m.pooler:
        feats = np.tanh(feats @ p['pooler_dense']['kernel'] + p['pooler_dense']['bias'])
    h = x[:, 1:] if m.class_token else x
    h = _ln(gelu(h @ p['mlm_dense']['kernel'] + p['mlm_dense']['bias']), p['mlm_norm'],
            m.norm_eps)
    return h @ emb['word']['embedding'].T + p['mlm_bias'], feats


@pytest.mark.parametrize('fields', [
    dict(norm='post', positions='learned', class_token=True, pool='mean'),
    dict(norm='pre', positions='rope', class_token=False, pool='cls', pooler=True),
], ids=['post_learned_cls_token', 'pre_rope_pooler'])
def test_bert_forward_matches_numpy(fields):
    """Random params (biases and norms too), padded rows: logits and features as NumPy's;
    the pad tokens' ids do not change the outputs at real positions."""
    m = bert.Model(vocab_size=40, max_len=17, width=16, depth=2, num_heads=2, mlp_dim=24,
                   scan_layers=False, norm_eps=1e-6, **fields)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 40, (3, 16)).astype(np.int32)
    types = rng.integers(0, 2, (3, 16)).astype(np.int32)
    mask = np.ones((3, 16), np.float32)
    mask[1, 9:], mask[2, 3:] = 0, 0
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), tokens)['params']
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3,
                          jax.tree.map(lambda x: getattr(x, 'value', x), shapes,
                                       is_leaf=lambda x: hasattr(x, 'value')))
    logits = np.asarray(m.apply({'params': params}, tokens, mask, types))
    feats = np.asarray(m.apply({'params': params}, tokens, mask, types, method='features'))
    want_logits, want_feats = numpy_bert(jax.tree.map(np.float64, params), m, tokens, mask,
                                         types)
    real = mask > 0
    np.testing.assert_allclose(logits[real], want_logits[real], atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(feats, want_feats, atol=2e-5, rtol=2e-4)
    repadded = np.where(real, tokens, 7).astype(np.int32)
    again = np.asarray(m.apply({'params': params}, repadded, mask, types))
    np.testing.assert_allclose(again[real], logits[real], atol=1e-5)


def test_scanned_and_unrolled_layers_agree():
    """The scanned model and the unrolled one on the same (unstacked) params."""
    tokens = np.random.default_rng(4).integers(0, 257, (2, 12)).astype(np.int32)
    m = bert.Model(width=16, depth=2, num_heads=2, mlp_dim=24, max_len=13, scan_layers=True)
    params = m.init(jax.random.PRNGKey(0), tokens)['params']
    stacked = params['encoder']['layers']
    unrolled = dict(params, encoder={f'layers_{i}': jax.tree.map(lambda x, i=i: x[i], stacked)
                                     for i in range(2)})
    np.testing.assert_allclose(
        np.asarray(m.apply({'params': params}, tokens)),
        np.asarray(m.clone(scan_layers=False).apply({'params': unrolled}, tokens)), atol=1e-5)


def test_model_field_errors():
    tokens = np.zeros((1, 8), np.int32)
    for fields, message in ((dict(norm='side'), "model norm 'side'"),
                            (dict(width=30, num_heads=4), 'num_heads=4 does not divide'),
                            (dict(max_len=8), (r'text length 9 \(with the class token\) > '
                                               'model max_len=8'))):
        with pytest.raises(ValueError, match=message):
            bert.Model(**{**dict(width=16, num_heads=2, depth=1, mlp_dim=8), **fields}).init(
                jax.random.PRNGKey(0), tokens)


# ----------------------------------------------------------------------------- through the CLI

TINY = ['--config.model.depth=2', '--config.model.width=64', '--config.model.mlp_dim=128']


@pytest.fixture(scope='module')
def mlm_run(tfds_dir, tmp_path_factory):
    """40 steps of experiments/mlm.py, data parallel over 2 simulated devices."""
    workdir = tmp_path_factory.mktemp('mlm') / 'run'
    run_cli('train', '--config', 'experiments/mlm.py:steps=40,seq=32,batch=16', '--workdir',
            str(workdir), *TINY, '--config.train.log_every=4', '--config.train.eval_every=40',
            '--config.evals.val.num_examples=32', devices=2)
    return workdir


def test_mlm_cli_trains_and_evaluates(mlm_run):
    loss = metric_series(mlm_run, 'train/loss')
    first, last = loss[min(loss)], loss[max(loss)]
    assert last < first - 1.0, loss  # from ~ln 257 = 5.55 nats
    val = {k: metric_series(mlm_run, f'val/{k}')[40]
           for k in ('loss', 'masked_accuracy', 'chosen_fraction', 'perplexity')}
    assert val['loss'] < np.log(256) - 1.5, val  # far better than a uniform guess
    assert 0.1 < val['masked_accuracy'] <= 1 and abs(val['chosen_fraction'] - 0.15) < 0.02
    out = run_cli('eval', '--workdir', str(mlm_run)).stdout  # 1 device, masks drawn again
    again = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
             if line.startswith('  val/')}
    assert abs(again['val/masked_accuracy'] - val['masked_accuracy']) < 1e-4, (again, val)
    assert abs(again['val/loss'] - val['loss']) < 1e-4
    config = json.loads((mlm_run / 'config.json').read_text())
    assert config['model']['name'] == 'bert' and config['model']['vocab_size'] == 257
    assert config['loss']['mask_id'] == 256 and config['model']['max_len'] == 33


def test_linear_probe_from_mlm_run_keeps_backbone(mlm_run, tmp_path):
    probe = tmp_path / 'probe'
    run_cli('train', '--config', f'experiments/finetune_text.py:init={mlm_run},'
            'mode=linear_probe,steps=4,seq=32,batch=8,lr=0.1', '--workdir', str(probe),
            '--config.train.eval_every=4', '--config.evals.val.num_examples=64')
    before, _ = checkpoint.restore_params(str(mlm_run))
    after, step = checkpoint.restore_params(str(probe))
    after = finetune.flatten(after)
    assert step == 4
    backbone = {p: v for p, v in finetune.flatten(before).items() if not p.startswith('mlm_')}
    assert len(backbone) > 10
    for path, value in backbone.items():  # every encoder param loaded, and frozen
        np.testing.assert_array_equal(np.asarray(value), np.asarray(after['encoder/' + path]))
    assert not any(p.startswith('encoder/mlm_') for p in after)  # head='none': no MLM head
    assert np.abs(np.asarray(after['head/kernel'])).sum() > 0
    assert 0 <= metric_series(probe, 'val/accuracy')[4] <= 1


def test_finetune_text_config_for_a_bert_backbone(mlm_run):
    """The backbone pools inside (the mean by default, or its class token), without its MLM
    head; LoRA's attention targets name BERT kernels; features embed with the run's model."""
    from jaxbig import data, experiment, models
    from jaxbig.run import load_run

    full = load(f'experiments/finetune_text.py:init={mlm_run},mode=full')
    assert full.model.backbone.pool == 'mean' and full.model.backbone.head == 'none'
    assert load(f'experiments/finetune_text.py:init={mlm_run},mode=linear_probe,pooling=cls'
                ).model.backbone.pool == 'cls'
    lora = experiment.resolve_auto(  # model.num_classes='auto': the stdlib's packages
        load(f'experiments/finetune_text.py:init={mlm_run},mode=lora,seq=32'))
    params = models.from_config(lora).init(jax.random.PRNGKey(0), np.zeros((1, 32), np.int32))
    adapters = finetune.flatten(params['params']['lora'])
    assert sorted({p.rsplit('/', 2)[0] for p in adapters}) == [  # 2 layers, unrolled
        f'encoder/encoder/layers_{i}/attn/{n}' for i in range(2) for n in ('query', 'value')]
    feats = load(f'experiments/finetune_text.py:init={mlm_run},mode=features,examples=16,seq=32')
    feats.data.embed_batch = 16
    pipe = data.build_pipeline(feats.data, split='train', batch_size=16, seed=0)
    run = load_run(str(mlm_run))
    rows = data.build_pipeline(feats.data.source, split='train', batch_size=16, seed=0
                               ).get_batch(0)
    want = run.model.apply({'params': run.params}, rows['inputs'], rows['mask'],
                           method='features')
    assert pipe.features.shape == (16, 64)
    np.testing.assert_allclose(pipe.features, np.asarray(want), atol=1e-5)
    for arg, message in (('pooling=last', "pooling='last' for a BERT backbone"),
                         ('mode=features,pooling=cls', "own model.pool='mean'")):
        with pytest.raises(ConfigError, match=message):
            load(f'experiments/finetune_text.py:init={mlm_run},{arg}')


@pytest.mark.slow  # ~1 min: two fine-tunes through the CLI
@pytest.mark.parametrize('mode', ['full', 'lora'])
def test_full_and_lora_finetune_from_mlm_run(mlm_run, tmp_path, mode):
    workdir = tmp_path / mode
    run_cli('train', '--config', f'experiments/finetune_text.py:init={mlm_run},mode={mode},'
            'steps=6,seq=32,batch=8', '--workdir', str(workdir), '--config.train.eval_every=6',
            '--config.evals.val.num_examples=64')
    assert 0 <= metric_series(workdir, 'val/accuracy')[6] <= 1


def test_mlm_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="norm='side', expected one of"):
        load('experiments/mlm.py:norm=side')
    (tmp_path / 'config.json').write_text(json.dumps(
        {'model': {'name': 'gpt'}, 'loss': {'name': 'autoregressive'}}))
    with pytest.raises(ConfigError, match="is not a masked-LM run \\(model.name='gpt'\\)"):
        load(f'experiments/mlm.py:init={tmp_path}')


# ----------------------------------------------------------------------------- Hugging Face

HF_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=24, max_position_embeddings=20, num_labels=3)
ARCHS = {'BertModel': {}, 'BertForMaskedLM': {}, 'BertForSequenceClassification': {},
         'BertForMaskedLM_scanned': dict(num_hidden_layers=7, hidden_act='gelu_new')}


def _hf_save(arch, path, **changes):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    config = transformers.BertConfig(**{**HF_BERT, **changes})
    model = getattr(transformers, arch.split('_')[0])(config)
    torch.manual_seed(0)
    for p in model.parameters():  # random biases and norms too, so their mapping is tested
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope='module', params=sorted(ARCHS))
def imported(request, tmp_path_factory):
    from jaxbig.interop import hf

    root = tmp_path_factory.mktemp(request.param)
    model = _hf_save(request.param, str(root / 'hf'), **ARCHS[request.param])
    info = hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return request.param, model, str(root / 'run'), info


def test_imported_bert_matches_transformers(imported):
    import torch

    from jaxbig.run import load_run

    name, model, workdir, info = imported
    run = load_run(workdir)
    rng = np.random.default_rng(5)
    ids, types = rng.integers(0, 50, (3, 14)), rng.integers(0, 2, (3, 14))
    mask = np.ones((3, 14), np.int64)
    mask[1, 6:] = 0
    apply = lambda *a, **k: np.asarray(run.model.apply({'params': run.params}, *a, **k))
    args = (ids.astype(np.int32), mask.astype(np.float32))
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    **({} if 'Sequence' in name else dict(token_type_ids=torch.tensor(types))))
    if name == 'BertModel':
        diffs = dict(hidden=apply(*args, types.astype(np.int32), method='hidden')
                     - ref.last_hidden_state.numpy(),
                     pooled=apply(*args, types.astype(np.int32)) - ref.pooler_output.numpy())
        assert run.config.model.pooler and run.config.model.head == 'none'
    elif name.startswith('BertForMaskedLM'):
        diffs = dict(logits=apply(*args, types.astype(np.int32)) - ref.logits.numpy())
        assert run.config.loss.name == 'masked_lm' and run.config.model.head == 'mlm'
        assert run.config.model.scan_layers == name.endswith('scanned')
    else:
        diffs = dict(logits=apply(*args) - ref.logits.numpy())
        assert run.config.model.name == 'classifier' and run.config.model.num_classes == 3
    worst = {k: float(np.abs(v).max()) for k, v in diffs.items()}
    assert max(worst.values()) < 1e-4, worst
    assert info['family'] == 'bert'
    assert info['num_params'] == sum(p.numel() for p in model.parameters())  # tied: once


def test_imported_mlm_with_tokenizer_trains_with_its_loss(tmp_path):
    """A tokenizer.json beside the weights: loss.mask_id is its [MASK], the data read
    through it; the run's own loss gives a finite loss and gradients everywhere."""
    tokenizers = pytest.importorskip('tokenizers')
    from jaxbig import losses
    from jaxbig.interop import hf
    from jaxbig.run import load_run

    vocab = {t: i for i, t in enumerate(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]',
                                         *(chr(c) for c in range(97, 97 + 45))])}
    _hf_save('BertForMaskedLM', str(tmp_path / 'hf'))
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token='[UNK]'))
    tok.save(str(tmp_path / 'hf' / 'tokenizer.json'))
    hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    run = load_run(str(tmp_path / 'run'))
    assert run.config.loss.mask_id == 4 and run.config.loss.random_ids == 50
    assert run.config.data.tokenizer == os.path.join(str(tmp_path / 'run'), 'tokenizer.json')
    assert load(f'experiments/mlm.py:init={tmp_path / "run"}').loss.mask_id == 4
    loss_fn = losses.get_loss_module(run.config.loss.name).loss_fn
    batch = dict(zip(('inputs', 'mask'), _tokens(np.random.default_rng(0), (4, 16))))
    batch['inputs'] %= 50
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: values(loss_fn(run.model.apply, p, batch, {'dropout': jax.random.PRNGKey(0)},
                                 run.config.loss, train=True)), has_aux=True)(run.params)
    assert np.isfinite(float(loss)) and float(metrics['chosen_fraction']) > 0
    assert all(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('case', ['untied', 'relative', 'left_over'])
def test_bad_bert_checkpoints_are_one_line_and_leave_no_workdir(tmp_path, case):
    from conftest import edit_safetensors

    from jaxbig.interop import hf

    changes = dict(untied=dict(tie_word_embeddings=False),
                   relative=dict(position_embedding_type='relative_key')).get(case, {})
    path = str(tmp_path / 'hf')
    _hf_save('BertForMaskedLM', path, **changes)
    if case == 'left_over':
        edit_safetensors(path, lambda t: t.update({'bert.extra.weight': np.zeros(3, np.float32)}))
    message = dict(untied="tie_word_embeddings=False is not representable in jaxbig's BERT",
                   relative="position_embedding_type='relative_key' is not representable",
                   left_over='tensors left over after mapping to bert: bert.extra.weight')[case]
    with pytest.raises(ConfigError, match=message):
        hf.import_dir(path, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith('.jaxbig-import')] == []
