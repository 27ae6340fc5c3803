"""An imported CLIPModel's own tokenizer.json as the run's caption tokenizer: the image_text
pipeline's captions and the zero-shot evaluator's prompts are tokenized as transformers'
CLIPTokenizer does (<|startoftext|> ... <|endoftext|>, padded with the eot), the text tower
pools at that eot (embeddings equal get_text_features), and experiments/clip.py:init=RUN
trains on the embedded shapes captions with it."""
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import metric_series  # noqa: E402

from jaxbig import cli, data, train  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.config import ConfigError  # noqa: E402
from jaxbig.data.text import captions  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

TEXT_LEN = 16
SHAPES = ['--config.data.num_train=512', '--config.data.num_test=128']  # quick to draw
CAPTIONS = ['a small red circle at the top left', 'A large BLUE square in the center',
            'a green triangle', 'zebra ' * 20]  # upper case, unknown words, truncation


def clip_tokenizer(words):
    """A CLIPTokenizer (CLIP's normaliser, pre-tokeniser, </w> BPE, bos/eos processor) over
    the byte alphabet with merges spelling each of `words` as one token; the two special
    tokens last, as in CLIP's own vocabulary."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(alphabet + [a + '</w>' for a in alphabet])}
    merges = []
    for word in sorted(words):
        parts = [*word[:-1], word[-1] + '</w>']
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ('<|startoftext|>', '<|endoftext|>'):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


@pytest.fixture(scope='module')
def clip_run(tfds_dir, tmp_path_factory):
    """(workdir of an imported random CLIPModel with its tokenizer.json, model, tokenizer)."""
    root = tmp_path_factory.mktemp('clip')
    tok = clip_tokenizer(captions.shapes_words())
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=TEXT_LEN,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=24)).eval()
    model.save_pretrained(str(root / 'hf'))
    tok.save_pretrained(str(root / 'hf'))
    hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return str(root / 'run'), model, tok


def _hf_ids(tok, texts):
    enc = tok(texts, padding='max_length', max_length=TEXT_LEN, truncation=True,
              return_tensors='pt')
    return enc['input_ids'], enc['attention_mask']


def test_import_makes_the_tokenizer_json_the_caption_tokenizer(clip_run):
    run, _, tok = clip_run
    config = run_lib.read_config(run)
    assert config.data.tokenizer == os.path.join(os.path.abspath(run), 'tokenizer.json')
    assert config.data.eos_id == tok.eos_token_id == config.model.text.eos_id
    caption_tok = captions.get_tokenizer(config.data.tokenizer, config.data.eos_id)
    ours = caption_tok.encode_batch(CAPTIONS, TEXT_LEN)
    np.testing.assert_array_equal(ours, _hf_ids(tok, CAPTIONS)[0].numpy())
    assert caption_tok.pad_id == tok.pad_token_id
    assert caption_tok.decode(ours[0]) == CAPTIONS[0]
    assert ours[3, -1] == tok.eos_token_id and ours[3, 0] == tok.bos_token_id  # truncated


def test_text_embeddings_of_pipeline_tokens_equal_get_text_features(clip_run):
    run, model, tok = clip_run
    config = cli.load_config(f'experiments/clip.py:init={run},batch=8', SHAPES)
    assert config.data.tokenizer.endswith('tokenizer.json') and config.data.max_len == TEXT_LEN
    data.prepare(config.data)
    pipeline = data.build_pipeline(config.data, split='train', batch_size=8, seed=0)
    texts = ['a small red circle at the top left', 'a large blue square at the bottom right']
    tokens = pipeline.tokenizer.encode_batch(texts, pipeline.max_len)  # as zero-shot prompts
    batch = pipeline.get_batch(0)['text']
    assert batch.shape == (8, TEXT_LEN) and (batch[:, 0] == tok.bos_token_id).all()
    assert ((batch == tok.eos_token_id).any(1)).all()
    loaded = run_lib.load_run(run)
    ids, mask = _hf_ids(tok, texts)
    np.testing.assert_array_equal(tokens, ids.numpy())
    projected = loaded.model.apply({'params': loaded.params}, tokens,
                                   method=lambda m, t: m.text_proj(m.text_tower.features(t)))
    unit = loaded.model.apply({'params': loaded.params}, tokens, method='encode_text')
    with torch.no_grad():
        ref = model.get_text_features(input_ids=ids, attention_mask=mask)
        ref = getattr(ref, 'pooler_output', ref).numpy()  # a tensor, or an output object
    np.testing.assert_allclose(np.asarray(projected), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(unit), ref / np.linalg.norm(ref, axis=1, keepdims=True),
                               atol=1e-4, rtol=0)


@pytest.mark.slow  # ~60-100 s on the shared 2-core CPU (compile of both towers and evals)
def test_clip_experiment_trains_from_the_imported_run(clip_run, tmp_path):
    run, _, _ = clip_run
    out = str(tmp_path / 'ft')
    config = cli.load_config(
        f'experiments/clip.py:init={run},steps=12,batch=32,lr=1e-3',
        ['--config.train.log_every=1', '--config.train.eval_every=0',
         '--config.train.checkpoint_every=0', '--config.evals.retrieval.max_examples=64',
         '--config.evals.zero_shot.templates=["a {} at the top left", "a {}"]',
         '--config.evals.zero_shot.max_examples=64', *SHAPES])
    assert config.init_from.path == run and config.data.image_size == 0
    last = train.train(config, out)
    losses = list(metric_series(out).values())
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
    assert 0 <= last['zero_shot/accuracy'] <= 1


def test_init_must_be_a_two_tower_run(tmp_path):
    import json

    (tmp_path / 'config.json').write_text(json.dumps({'model': {'name': 'vit'}}))
    with pytest.raises(ConfigError, match="has model.name='vit', expected a 'two_tower' run"):
        cli.load_config(f'experiments/clip.py:init={tmp_path}', [])
    with pytest.raises(ConfigError, match=r"data.tokenizer='nope.json': no such file"):
        captions.get_tokenizer('nope.json')
