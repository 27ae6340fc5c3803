"""Hugging Face T5 import against the real thing: tiny random T5ForConditionalGeneration
models built by transformers itself (relu / gated-gelu, tied / untied head), saved, imported
with `jaxbig import`; logits on padded inputs and greedy generation compared; bad configs
are one line."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from jaxbig import cli  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.config import ConfigError  # noqa: E402
from jaxbig.interop import hf  # noqa: E402
from jaxbig.models import t5  # noqa: E402

VOCAB = 100


def _t5(feed_forward, tied, **kw):
    cfg = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               feed_forward_proj=feed_forward, decoder_start_token_id=0,
               relative_attention_num_buckets=8, relative_attention_max_distance=20)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**{**cfg, **kw}))
    for p in model.parameters():  # random norms too, so their mapping is tested
        torch.nn.init.normal_(p, std=0.3)
    if not tied:  # T5 v1.1's separate head, no rescale (transformers 5 ties by default)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.3)
        model.config.tie_word_embeddings = False
        model.config.scale_decoder_outputs = False
    return model.eval()


CASES = {'relu_tied': ('relu', True), 'relu_untied': ('relu', False),
         'gated_gelu_tied': ('gated-gelu', True), 'gated_gelu_untied': ('gated-gelu', False)}


@pytest.fixture(scope='module', params=sorted(CASES))
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = _t5(*CASES[request.param])
    model.save_pretrained(str(root / 'hf'))
    assert cli.main(['import', str(root / 'hf'), '--workdir', str(root / 'run')]) == 0
    return request.param, model, root


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    enc, dec = rng.integers(2, VOCAB, (2, 12)), rng.integers(2, VOCAB, (2, 9))
    mask = np.ones((2, 12), np.int64)
    mask[1, 7:] = 0  # the second prompt is right-padded
    dec[:, 0] = 0  # decoder_start
    return enc, mask, dec


def test_logits_match_transformers(imported):
    name, model, root = imported
    run = run_lib.load_run(str(root / 'run'))
    assert run.model.tie_embeddings == CASES[name][1]
    enc, mask, dec = _inputs()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = np.asarray(run.model.apply({'params': run.params}, *(
        x.astype(np.int32) for x in (enc, mask, dec))))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(imported):
    _, model, root = imported
    run = run_lib.load_run(str(root / 'run'))
    enc, mask, _ = _inputs(1)
    eos = model.config.eos_token_id
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=16).numpy()[:, 1:]
    ours, lengths = t5.generate(run.model, run.params, [enc[0], enc[1, :7]],
                                max_new_tokens=16, eos_id=eos)
    for row, n, want in zip(ours, lengths, ref):
        hf_len = list(want).index(eos) + 1 if eos in want else len(want)
        assert n == hf_len
        np.testing.assert_array_equal(row[:n], want[:n])
    assert max(lengths) > 3  # not a trivially short answer


def test_relative_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-600, 600)
    for bidirectional in (True, False):
        want = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional,
                                                     32, 128).numpy()
        got = t5.relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32,
                                          max_distance=128)
        np.testing.assert_array_equal(np.asarray(got), want)


def _edit(path, **changes):
    file = os.path.join(path, 'config.json')
    with open(file) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(file, 'w') as f:
        json.dump(cfg, f)


BAD = {
    'activation': (dict(feed_forward_proj='gated-tanh', dense_act_fn='tanh'),
                   "feed_forward_proj='gated-tanh' is not representable"),
    'gated flag': (dict(is_gated_act=False), "is_gated_act=False is not representable"),
    'decoder only': (dict(is_encoder_decoder=False), 'is_encoder_decoder=False'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_unrepresentable_config_is_one_line(tmp_path, case):
    path = str(tmp_path / 'hf')
    _t5('gated-gelu', True).save_pretrained(path)
    changes, message = BAD[case]
    _edit(path, **changes)
    with pytest.raises(ConfigError) as e:
        hf.import_dir(path, str(tmp_path / 'run'))
    assert message in str(e.value) and '\n' not in str(e.value)
    assert not (tmp_path / 'run').exists()
