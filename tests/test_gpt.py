"""jaxbig.models.gpt: each mathematical piece against an independent NumPy reference,
plus the structural promises (causality, scan == loop, remat == none, logical axes, dtypes)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxbig.models import get_model
from jaxbig.models.gpt import SIZES, Model, count_params, flops_per_token
from jaxbig.models.layers import RMSNorm, apply_rope, attention_blocks, causal_attention

SMALL = dict(vocab_size=61, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=48)
BATCH, SEQ = 2, 12


def _tokens(seed=0):
    return jax.random.randint(jax.random.key(seed), (BATCH, SEQ), 0, SMALL['vocab_size'])


def _init(model):
    return model.init(jax.random.key(1), _tokens())


@functools.cache
def _variables(scan_layers=True, tie_embeddings=True):
    """Variables for Model(**SMALL, ...): the real tree with its logical-axis boxes, filled
    from NumPy (model.init takes seconds to compile on CPU; test_init covers it). Norm scales
    are random too, so a layer mapped to the wrong index would show. dtype, dropout and remat
    do not change the tree, so those models share these."""
    model = Model(**SMALL, scan_layers=scan_layers, tie_embeddings=tie_embeddings)
    shapes = jax.eval_shape(model.init, jax.random.key(0), _tokens())
    rng = np.random.default_rng(0)

    def draw(path, x):
        center, std = (1.0, 0.2) if 'scale' in jax.tree_util.keystr(path) else (0.0, 0.1)
        return jnp.asarray(center + std * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnames=('model', 'train', 'method'))
def _apply(model, variables, tokens, *, train=False, seed=0, method='__call__'):
    """model.apply, jitted (eager apply of a scanned model re-traces the scan every call)."""
    return model.apply(variables, tokens, train=train, rngs={'dropout': jax.random.key(seed)},
                       method=method)


def _flat(tree):
    """{'a/b/c': leaf} for an (unboxed) tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator='/'): x for p, x in leaves}


def _hand_param_count(vocab, layers, heads, embed, mlp, head_dim, tied=True, kv_heads=0):
    kv_heads = kv_heads or heads  # q and out: heads; k and v: kv_heads (grouped-query)
    per_layer = (2 * heads + 2 * kv_heads) * embed * head_dim + 3 * embed * mlp + 2 * embed
    return vocab * embed + layers * per_layer + embed + (0 if tied else embed * vocab)


# ----------------------------------------------------------------------------- references

def np_causal_attention(q, k, v):
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    seq, head_dim = q.shape[1], q.shape[-1]
    scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(head_dim)
    scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum('bhqk,bkhd->bqhd', probs, v)


def np_rope(x, positions, base):
    """Pairs (x_i, x_{i+d/2}) as complex numbers, multiplied by exp(i * pos * base^(-2i/d))."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    theta = base ** (-2.0 * np.arange(half) / x.shape[-1])
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * positions[:, None, None] * theta)
    return np.concatenate([z.real, z.imag], axis=-1)


# ----------------------------------------------------------------------------- pieces

def test_causal_attention_matches_numpy():
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 7, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(causal_attention(q, k, v), np_causal_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)
    bf16 = causal_attention(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf16.astype(np.float32), np_causal_attention(q, k, v), atol=5e-2)


@pytest.mark.parametrize('num_blocks', [1, 2, 3, 4])
def test_blocked_causal_attention_matches_numpy_values_and_gradients(num_blocks):
    """Query blocks that skip the masked keys give the same outputs and gradients."""
    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 12, 2, 4)).astype(np.float32)
    out = causal_attention(q, k, v, num_blocks=num_blocks)
    np.testing.assert_allclose(out, np_causal_attention(q, k, v), rtol=1e-5, atol=1e-5)
    loss = lambda nb: lambda *t: jnp.sum(causal_attention(*t, num_blocks=nb) ** 2)
    grads = jax.grad(loss(num_blocks), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, jax.grad(loss(1), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_blocks_rule_and_bad_block_count():
    assert [attention_blocks(s) for s in (7, 64, 128, 256, 512, 1001, 2048)] == [1, 1, 2, 4, 4, 1, 4]
    q = np.zeros((1, 12, 1, 4), np.float32)
    with pytest.raises(ValueError, match='seq=12 is not divisible by num_blocks=5'):
        causal_attention(q, q, q, num_blocks=5)


def test_rmsnorm_matches_numpy():
    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=(2, 5, 16)) + 1).astype(np.float32)
    scale = rng.normal(size=16).astype(np.float32)
    ref = x / np.sqrt(np.mean(np.float64(x) ** 2, -1, keepdims=True) + 1e-6) * scale
    y = RMSNorm(eps=1e-6).apply({'params': {'scale': scale}}, x)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    y16 = RMSNorm(eps=1e-6, dtype=jnp.bfloat16).apply({'params': {'scale': scale}}, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(np.float32), ref, rtol=2e-2, atol=2e-2)


def test_rope_matches_numpy_and_preserves_norm():
    x = np.random.default_rng(0).normal(size=(2, 9, 3, 16)).astype(np.float32)
    positions = np.arange(9)
    y = apply_rope(x, positions, 10000.0)
    np.testing.assert_allclose(y, np_rope(x, positions, 10000.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)  # position 0 is the identity


def test_rope_dot_product_depends_only_on_relative_position():
    q, k = np.random.default_rng(1).normal(size=(2, 1, 1, 1, 32)).astype(np.float32)

    def rot(x, pos):
        return np.asarray(apply_rope(x, np.array([pos]), 10000.0)).ravel()

    dots = [rot(q, m) @ rot(k, n) for m, n in [(5, 2), (13, 10), (3, 0), (103, 100)]]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-4)
    assert abs(rot(q, 5) @ rot(k, 2) - rot(q, 5) @ rot(k, 50)) > 1e-2  # not position-blind


# ----------------------------------------------------------------------------- model

def test_init():
    """Norm scales 1; weights N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 layers))."""
    model = Model(**SMALL)
    params = _flat(nn.unbox(jax.jit(model.init)(jax.random.key(0), _tokens()))['params'])
    expected_shapes = jax.tree.map(jnp.shape, _flat(nn.unbox(_variables())['params']))
    assert jax.tree.map(jnp.shape, params) == expected_shapes
    for name in ('final_norm/scale', 'layers/attn_norm/scale', 'layers/mlp_norm/scale'):
        np.testing.assert_array_equal(params[name], 1.0)
    residual_std = 0.02 / np.sqrt(2 * SMALL['num_layers'])
    for name, std in [('embed/embedding', 0.02), ('layers/attn/query/kernel', 0.02),
                      ('layers/mlp/gate/kernel', 0.02), ('layers/attn/out/kernel', residual_std),
                      ('layers/mlp/down/kernel', residual_std)]:
        assert np.std(params[name]) == pytest.approx(std, rel=0.1), name
    query = params['layers/attn/query/kernel']
    assert not np.allclose(query[0], query[1])  # each scanned layer draws its own init


def test_causality():
    model, tokens, variables = Model(**SMALL), _tokens(), _variables()
    t = 5
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 1) % SMALL['vocab_size'])
    a, b = _apply(model, variables, tokens), _apply(model, variables, changed)
    assert a.shape == (BATCH, SEQ, SMALL['vocab_size'])
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
    assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max(axis=-1).min() > 1e-4  # every later position


def test_features_and_tied_logits():
    model, variables = Model(**SMALL), _variables()
    feats = _apply(model, variables, _tokens(), method='features')
    assert feats.shape == (BATCH, SEQ, SMALL['embed_dim'])
    embedding = nn.unbox(variables)['params']['embed']['embedding']
    np.testing.assert_allclose(_apply(model, variables, _tokens()), feats @ embedding.T,
                               rtol=1e-5, atol=1e-5)


def test_scan_equals_loop_with_same_params():
    scanned, looped = Model(**SMALL, scan_layers=True), Model(**SMALL, scan_layers=False)
    params = nn.unbox(_variables())['params']
    unstacked = {k: v for k, v in params.items() if k != 'layers'}
    for i in range(SMALL['num_layers']):
        unstacked[f'layers_{i}'] = jax.tree.map(lambda a, i=i: a[i], params['layers'])
    loop_shapes = jax.tree.map(jnp.shape, nn.unbox(_variables(scan_layers=False))['params'])
    assert jax.tree.map(jnp.shape, unstacked) == loop_shapes
    np.testing.assert_allclose(_apply(scanned, {'params': params}, _tokens()),
                               _apply(looped, {'params': unstacked}, _tokens()),
                               rtol=1e-5, atol=1e-5)


@functools.cache
def _loss_and_grads(remat):
    model = Model(**SMALL, remat=remat)
    params = nn.unbox(_variables())['params']

    def loss(p):
        logits = model.apply({'params': p}, _tokens(), train=True)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_same_logits_and_grads(remat):
    shapes = jax.eval_shape(functools.partial(_init, Model(**SMALL, remat=remat)))
    assert jax.tree.structure(shapes) == jax.tree.structure(_variables())
    ((_, logits0), g0), ((_, logits1), g1) = _loss_and_grads('none'), _loss_and_grads(remat)
    np.testing.assert_allclose(logits0, logits1, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_remat_without_scan():
    """The Python-loop path wraps each Block in nn.remat too (`train` static)."""
    variables = _variables(scan_layers=False)
    plain, rematted = (Model(**SMALL, scan_layers=False, remat=r) for r in ('none', 'full'))
    np.testing.assert_allclose(_apply(plain, variables, _tokens(), train=True),
                               _apply(rematted, variables, _tokens(), train=True),
                               rtol=1e-6, atol=1e-6)


def test_fused_attention_entry_point_matches_einsum():
    """model.attention='xla' (jax.nn.dot_product_attention) computes the same model."""
    variables = _variables()
    np.testing.assert_allclose(_apply(Model(**SMALL), variables, _tokens()),
                               _apply(Model(**SMALL, attention='xla'), variables, _tokens()),
                               rtol=1e-5, atol=1e-5)


def test_attention_blocks_field_reaches_the_model():
    """model.attention_blocks=3 (blocks of 4 of SEQ=12) computes the same logits as one
    [seq, seq] product; a block count that does not divide seq is an error."""
    variables = _variables()
    np.testing.assert_allclose(_apply(Model(**SMALL, attention_blocks=1), variables, _tokens()),
                               _apply(Model(**SMALL, attention_blocks=3), variables, _tokens()),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='seq=12 is not divisible by num_blocks=5'):
        _apply(Model(**SMALL, attention_blocks=5), variables, _tokens())


def test_bad_remat_and_shapes_raise():
    with pytest.raises(ValueError, match='model.attention_blocks=-1'):
        _init(Model(**SMALL, attention_blocks=-1))
    with pytest.raises(ValueError, match="model.attention='flash'"):
        _init(Model(**SMALL, attention='flash'))
    with pytest.raises(ValueError, match="model.remat='bogus'"):
        _init(Model(**SMALL, remat='bogus'))
    with pytest.raises(ValueError, match="model.dtype='bf16' is not a dtype"):
        _init(Model(**SMALL, dtype='bf16'))
    with pytest.raises(ValueError, match='not divisible'):
        _init(Model(**{**SMALL, 'num_heads': 3}))


def test_params_carry_logical_axes():
    variables = _variables(tie_embeddings=False)
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)
    specs = _flat(nn.get_partition_spec(variables)['params'])
    assert specs == {
        'embed/embedding': P('vocab', 'embed'),
        'layers/attn_norm/scale': P('layers', 'embed'),
        'layers/attn/query/kernel': P('layers', 'embed', 'heads', 'kv'),
        'layers/attn/key/kernel': P('layers', 'embed', 'heads', 'kv'),
        'layers/attn/value/kernel': P('layers', 'embed', 'heads', 'kv'),
        'layers/attn/out/kernel': P('layers', 'heads', 'kv', 'embed'),
        'layers/mlp_norm/scale': P('layers', 'embed'),
        'layers/mlp/gate/kernel': P('layers', 'embed', 'mlp'),
        'layers/mlp/up/kernel': P('layers', 'embed', 'mlp'),
        'layers/mlp/down/kernel': P('layers', 'mlp', 'embed'),
        'final_norm/scale': P('embed'),
        'unembed/kernel': P('embed', 'vocab'),
    }
    loop_specs = _flat(nn.get_partition_spec(_variables(scan_layers=False))['params'])
    assert loop_specs['layers_1/attn/query/kernel'] == P('embed', 'heads', 'kv')


def test_activation_constraints_under_mesh_and_rules():
    """A remat'ed training forward pass with rules and a mesh active: constraint and parameter
    axis names must match ranks (apply re-runs the param initialisers to check shapes, so this
    covers init under a mesh too), and `train` must stay static through scan + remat."""
    mesh = jax.make_mesh((1, 1), ('data', 'tensor'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = [('batch', 'data'), ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
             ('length', None), ('embed', None), ('kv', None), ('layers', None)]
    model, variables = Model(**SMALL, dropout=0.1, remat='full'), _variables()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # not _apply: its jit cache does not know about the rules
        rngs = {'dropout': jax.random.key(0)}
        out = jax.jit(lambda v, t: model.apply(v, t, train=True, rngs=rngs))(variables, _tokens())
    assert out.shape == (BATCH, SEQ, SMALL['vocab_size'])


def test_dropout_only_in_training():
    model, variables = Model(**SMALL, dropout=0.5), _variables()

    def run(seed):
        return _apply(model, variables, _tokens(), train=True, seed=seed)

    eval_logits = _apply(model, variables, _tokens())
    np.testing.assert_array_equal(eval_logits, _apply(model, variables, _tokens(), seed=1))
    assert not np.allclose(run(0), eval_logits) and not np.allclose(run(0), run(1))


def test_bfloat16_compute_float32_params():
    f32, bf16 = Model(**SMALL), Model(**SMALL, dtype='bfloat16')
    bf16_shapes = jax.eval_shape(functools.partial(_init, bf16))
    assert {x.dtype for x in jax.tree.leaves(bf16_shapes)} == {jnp.dtype('float32')}
    variables = _variables()  # the same float32 tree bf16.init creates
    ref, out = _apply(f32, variables, _tokens()), _apply(bf16, variables, _tokens())
    assert out.dtype == jnp.bfloat16 and ref.dtype == jnp.float32
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_tied_untied_and_param_counts():
    p_tied, p_untied = _variables()['params'], _variables(tie_embeddings=False)['params']
    assert 'unembed' not in p_tied
    unembed = nn.unbox(p_untied)['unembed']['kernel']
    assert unembed.shape == (SMALL['embed_dim'], SMALL['vocab_size'])
    logits = _apply(Model(**SMALL, tie_embeddings=False), {'params': p_untied}, _tokens())
    assert logits.shape == (BATCH, SEQ, SMALL['vocab_size'])
    hand = dict(vocab=61, layers=2, heads=2, embed=32, mlp=48, head_dim=16)
    assert count_params(p_tied) == _hand_param_count(**hand)
    assert count_params(p_untied) == _hand_param_count(**hand, tied=False)
    # an explicit head_dim decouples it from embed_dim // num_heads
    p = jax.eval_shape(Model(**SMALL, head_dim=8).init, jax.random.key(0), _tokens())['params']
    assert count_params(p) == _hand_param_count(**{**hand, 'head_dim': 8})


def test_sizes_param_counts():
    tokens = jnp.zeros((1, 8), jnp.int32)
    for name, size in SIZES.items():
        p = jax.eval_shape(Model(**size, vocab_size=256).init, jax.random.key(0), tokens)['params']
        hand = _hand_param_count(256, size['num_layers'], size['num_heads'], size['embed_dim'],
                                 size['mlp_dim'], size['embed_dim'] // size['num_heads'],
                                 kv_heads=size.get('num_kv_heads', 0))
        assert count_params(p) == hand, name


def test_flops_per_token_matches_maxtext_formula():
    """MaxText's calculate_tflops_training_per_device, transcribed for batch 1, per token."""
    L, H, E, M, V, S = 4, 4, 128, 384, 256, 128
    D = E // H
    ffn = 2 * S * M * E * 2 + 2 * S * M * E                  # gate + up (two activations), down
    qkv = 2 * S * E * (H + 2 * H) * D
    projection = 2 * S * E * H * D
    embedding = 2 * S * E * V
    causal_attention_flops = 4 * S**2 * H * D / 2
    total = ((ffn + qkv + projection) * L + embedding) * 3 + causal_attention_flops * L * 3
    model = Model(**SIZES['tiny'], vocab_size=V)
    assert flops_per_token(model, S) == pytest.approx(total / S, rel=1e-12)
    # the usual approximation: ~6 x (non-embedding params + unembedding) when seq is short
    n = _hand_param_count(V, L, H, E, M, D) - 2 * L * E - E   # matmul weights only
    assert flops_per_token(model, 1) == pytest.approx(6 * n, rel=1e-3)


def test_get_model():
    model = get_model('gpt', **SMALL)
    assert isinstance(model, Model) and model.num_layers == SMALL['num_layers']
    with pytest.raises(ValueError, match=r"model.name='nope': no module jaxbig.models.nope "
                                         r"defining Model \(available: .*gpt"):
        get_model('nope')
