"""jaxbig.generate: cached == uncached greedy decoding, sampling filters against NumPy,
left-padded batches == each prompt alone, stop sequences, streaming, and the CLI on one
briefly trained run (two checkpoints): --seed, --step, --stop as streamed, --quantize."""

import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_LM, run_cli

from jaxbig import checkpoint, cli, quantize
from jaxbig import generate as gen
from jaxbig import run as run_lib
from jaxbig.commands import generate as generate_command
from jaxbig.data.text.tokenizers import ByteTokenizer
from jaxbig.models import gpt, layers, lstm

SMALL = dict(vocab_size=61, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=48)
PROMPTS = [np.array([5, 7, 11, 13, 2, 40, 9]), np.array([3, 1]), np.array([8, 30, 22, 17])]


@functools.cache
def _params(model):
    """Random params from NumPy (no init compile): weights N(0, 0.3) so logits are peaked
    and greedy choices are far from ties; norm scales ~1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)

    def draw(path, x):
        is_scale = 'scale' in jax.tree_util.keystr(path)
        return jnp.asarray((1.0 if is_scale else 0.0) + 0.3 * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)['params']


def np_masked_attention(q, k, v, q_pos, k_pos):
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    ok = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
    s = np.where(ok[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum('bhqk,bkhd->bqhd', p / p.sum(-1, keepdims=True), v)


def test_cached_attention_matches_numpy():
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 6, 2, 8)).astype(np.float32)
    q = q[:, :2]
    k_pos = np.array([[-1, -1, 0, 1, 2, 3], [0, 1, 2, 3, 4, -1]])
    q_pos = np.array([[2, 3], [1, 4]])
    np.testing.assert_allclose(layers.cached_attention(q, k, v, q_pos, k_pos),
                               np_masked_attention(q, k, v, q_pos, k_pos), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scan_layers', [True, False])
def test_gpt_cached_equals_uncached_greedy(scan_layers):
    model = gpt.Model(**SMALL, scan_layers=scan_layers)
    params = _params(model)
    out, lengths = gen.generate(model, params, [PROMPTS[0]], max_new_tokens=16)
    ref = gen.generate_uncached(model, params, PROMPTS[0], max_new_tokens=16)
    assert lengths.tolist() == [16]
    np.testing.assert_array_equal(out[0], ref)
    assert len(set(ref.tolist())) > 3  # not a degenerate repeat of one token


def test_gpt_decode_logits_equal_full_forward():
    """Prefill 5 tokens then 3 single steps == the training forward's logits."""
    model = gpt.Model(**SMALL)
    params = _params(model)
    tokens = jnp.asarray([[5, 7, 11, 13, 2, 40, 9, 1]])
    full = model.apply({'params': params}, tokens)
    cache = gpt.init_cache(model, 1, 10)
    pos = jnp.arange(8)[None]
    dec = jax.jit(functools.partial(model.apply, {'params': params}, method='decode'))
    logits, cache = dec(tokens[:, :5], pos[:, :5], cache)
    steps = [logits]
    for i in range(5, 8):
        logits, cache = dec(tokens[:, i:i + 1], pos[:, i:i + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)
    assert int(cache['index']) == 8


@pytest.mark.parametrize('family', ['gpt', 'lstm'])
def test_batch_of_different_lengths_equals_each_alone(family):
    if family == 'gpt':
        model = gpt.Model(**SMALL)
    else:
        model = lstm.Model(vocab_size=61, embed_dim=16, hidden_dim=32, num_layers=2)
    params = _params(model)
    prompts = PROMPTS[:2]
    batch, _ = gen.generate(model, params, prompts, max_new_tokens=8)
    for row, prompt in zip(batch, prompts):
        alone, _ = gen.generate(model, params, [prompt], max_new_tokens=8)
        np.testing.assert_array_equal(row, alone[0])


def test_left_pad():
    tokens, positions = gen.left_pad([np.array([4, 5, 6]), np.array([7])])
    np.testing.assert_array_equal(tokens, [[4, 5, 6], [0, 0, 7]])
    np.testing.assert_array_equal(positions, [[0, 1, 2], [-1, -1, 0]])


# ----------------------------------------------------------------------------- sampling

LOGITS = np.log(np.array([[0.02, 0.30, 0.05, 0.20, 0.01, 0.25, 0.12, 0.05]], np.float32))


def _draws(n=4000, **kw):
    fn = jax.jit(jax.vmap(lambda key: gen.sample_logits(LOGITS, key, **kw)[0]))
    return np.asarray(fn(jax.random.split(jax.random.key(0), n)))


def test_temperature_to_zero_equals_greedy():
    assert set(_draws(temperature=1e-6).tolist()) == {1}
    logits = np.random.default_rng(0).normal(size=(64, 61)).astype(np.float32) * 3
    cold = gen.sample_logits(logits, jax.random.key(1), temperature=1e-6)
    np.testing.assert_array_equal(cold, np.argmax(logits, -1))
    np.testing.assert_array_equal(gen.sample_logits(logits, None, temperature=0),
                                  np.argmax(logits, -1))


def test_temperature_to_zero_generation_equals_greedy():
    model = gpt.Model(**SMALL)
    params = _params(model)
    greedy, _ = gen.generate(model, params, PROMPTS[:2], max_new_tokens=8)
    cold, _ = gen.generate(model, params, PROMPTS[:2], max_new_tokens=8, temperature=1e-6,
                           seed=3)
    np.testing.assert_array_equal(cold, greedy)


def _renormalised(keep):
    p = np.exp(LOGITS[0].astype(np.float64)) * keep
    return p / p.sum()


def test_top_k_only_emits_the_k_most_likely():
    draws = _draws(temperature=1.0, top_k=3)
    allowed = set(np.argsort(-LOGITS[0])[:3].tolist())  # {1, 5, 3}
    assert set(draws.tolist()) == allowed
    freq = np.bincount(draws, minlength=8) / len(draws)
    np.testing.assert_allclose(freq, _renormalised(np.isin(np.arange(8), list(allowed))),
                               atol=0.03)


def test_top_p_keeps_the_smallest_nucleus():
    order = np.argsort(-LOGITS[0])
    probs = np.exp(LOGITS[0])[order]
    size = int(np.searchsorted(np.cumsum(probs), 0.7) + 1)  # 0.30+0.25+0.20 = 0.75 >= 0.7
    allowed = set(order[:size].tolist())
    draws = _draws(temperature=1.0, top_p=0.7)
    assert set(draws.tolist()) == allowed == {1, 5, 3}
    freq = np.bincount(draws, minlength=8) / len(draws)
    np.testing.assert_allclose(freq, _renormalised(np.isin(np.arange(8), list(allowed))),
                               atol=0.03)
    assert set(_draws(temperature=1.0, top_p=0.01).tolist()) == {1}  # the top token always


# ----------------------------------------------------------------------------- stop, stream

def test_stop_sequence_and_streaming():
    model = gpt.Model(**SMALL)
    params = _params(model)
    free, _ = gen.generate(model, params, [PROMPTS[0]], max_new_tokens=12)
    stop = free[0, 3:5]  # a sequence the greedy run emits at steps 3, 4
    first = next(i for i in range(11) if (free[0, i:i + 2] == stop).all())
    seen = []
    out, lengths = gen.generate(model, params, [PROMPTS[0], PROMPTS[0]], max_new_tokens=12,
                                stop=stop, on_tokens=lambda i, t: seen.append((i, t[0])))
    assert lengths.tolist() == [first + 2] * 2
    np.testing.assert_array_equal(out[0, :first + 2], free[0, :first + 2])
    assert (out[0, first + 2:] == 0).all()
    assert [i for i, _ in seen] == list(range(first + 2))  # the loop exits early
    np.testing.assert_array_equal([t for _, t in seen], free[0, :first + 2])


def test_streamer_waits_for_whole_utf8_characters():
    buf = io.StringIO()
    s = gen.Streamer(ByteTokenizer(), out=buf)
    for i, b in enumerate('aé€'.encode()):
        s(i, np.array([b]))
    assert buf.getvalue() == 'aé€'


def _stream(text, stop):
    """(printed before finish(), printed in all) streaming `text` byte by byte."""
    buf = io.StringIO()
    s = gen.Streamer(ByteTokenizer(), out=buf, stop=ByteTokenizer().encode(stop))
    for i, b in enumerate(text.encode()):
        s(i, np.array([b, 0]))
    before = buf.getvalue()
    s.finish()
    return before, buf.getvalue()


def test_streamer_never_prints_the_stop_sequence():
    assert _stream('x = 1\n\ny = 2', '\n\n') == ('x = 1', 'x = 1')
    assert _stream('ab\nc\n\nzz', '\n\n') == ('ab\nc', 'ab\nc')  # a partial match released
    assert _stream('done\n', '\n\n') == ('done', 'done\n')  # held back, printed at the end
    assert _stream('€€ab€', 'b€') == ('€€a', '€€a')  # multi-byte stop
    assert _stream('plain', '') == ('plain', 'plain')


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope='module')
def trained(tfds_dir, tmp_path_factory):
    """A tiny LM trained 4 steps at a high learning rate, checkpoints at steps 2 and 4."""
    workdir = str(tmp_path_factory.mktemp('generate_run'))
    run_cli('train', '--workdir', workdir, '--config', 'experiments/lm.py:steps=4', *TINY_LM,
            '--config.train.checkpoint_every=2', '--config.optimizer.lr=0.03',
            '--config.optimizer.warmup_steps=1')
    return workdir


def _main(workdir, capsys, *args):
    """`jaxbig generate` in this process (its compiled loop is cached across calls)."""
    capsys.readouterr()
    parsed = cli.build_parser().parse_args(['generate', '--workdir', workdir, *args])
    assert generate_command.main(parsed) == 0
    return capsys.readouterr()


SAMPLE = ('--prompt', 'def f(x):', '--max-new-tokens', '16', '--temperature', '1.0')


def test_cli_generate_prints_text_and_int8_size(trained):
    proc = run_cli('generate', '--workdir', trained, '--prompt', 'def f(x):',
                   '--max-new-tokens', '24', '--temperature', '0.8', '--top-k', '40',
                   '--top-p', '0.9', '--quantize', 'int8')
    assert proc.stdout.startswith('def f(x):')
    assert len(proc.stdout.strip()) > len('def f(x):')
    params, step = checkpoint.restore_params(trained)
    before, after = quantize.kernel_bytes(params), quantize.kernel_bytes(
        quantize.quantize_params(params))
    match = re.search(r'int8 \(step (\d+)\): kernel bytes ([\d,]+) float32 -> ([\d,]+) '
                      r'int8\+scales \(([\d.]+)x smaller\)', proc.stderr)
    assert match, proc.stderr[-2000:]
    assert int(match[1]) == step == 4
    assert [int(match[k].replace(',', '')) for k in (2, 3)] == [before, after]
    assert float(match[4]) == pytest.approx(before / after, abs=0.01) and float(match[4]) > 3.5


def test_cli_seed(trained, capsys):
    first = _main(trained, capsys, *SAMPLE, '--seed', '1').out
    assert first.startswith('def f(x):') and first.endswith('\n')
    assert _main(trained, capsys, *SAMPLE, '--seed', '1').out == first
    assert _main(trained, capsys, *SAMPLE, '--seed', '2').out != first


def test_cli_step_chooses_the_checkpoint(trained, capsys):
    tok = ByteTokenizer()
    model = run_lib.load_run(trained).model
    outputs = {}
    for step in (2, 4):
        params, restored = checkpoint.restore_params(trained, step)
        assert restored == step
        out, n = gen.generate(model, params, [tok.encode('def f(x):')], max_new_tokens=16,
                              temperature=1.0, seed=0, eos_id=tok.eos_id,
                              on_tokens=lambda i, t: None)
        outputs[step] = 'def f(x):' + tok.decode(out[0, :n[0]]) + '\n'
    assert outputs[2] != outputs[4]  # the checkpoints really differ
    assert _main(trained, capsys, *SAMPLE, '--step', '2').out == outputs[2]
    assert _main(trained, capsys, *SAMPLE).out == outputs[4]  # default: the latest
    with pytest.raises(FileNotFoundError, match=r'step 3: .*available steps: \[2, 4\]'):
        _main(trained, capsys, *SAMPLE, '--step', '3')


def test_cli_stop_sequence_is_not_streamed(trained, capsys):
    free = _main(trained, capsys, *SAMPLE).out[len('def f(x):'):-1]  # compiled loop cached
    assert len(free) > 8, free
    stop = free[5:7]
    cut = free.index(stop)
    out = _main(trained, capsys, *SAMPLE, '--stop', stop.replace('\n', '\\n')).out
    assert out == 'def f(x):' + free[:cut] + '\n'


def test_decoding_form_unrolls_a_scanned_gpt_and_keeps_its_tokens():
    """Scanned layers are unstacked for the decoding loop (2x faster on CPU); the tokens
    equal the uncached forward of the scanned model itself."""
    model = gpt.Model(vocab_size=64, num_layers=3, num_heads=2, embed_dim=32, mlp_dim=64,
                      scan_layers=True, num_kv_heads=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
    fast, unrolled = gen.decoding_form(model, params)
    assert not fast.scan_layers and 'layers' not in unrolled
    assert sorted(k for k in unrolled if k.startswith('layers_')) == [f'layers_{i}' for i in range(3)]
    prompt = np.array([5, 9, 2, 7])
    out, _ = gen.generate(model, params, [prompt], max_new_tokens=10, temperature=0)
    np.testing.assert_array_equal(out[0], gen.generate_uncached(model, params, prompt,
                                                                 max_new_tokens=10))
