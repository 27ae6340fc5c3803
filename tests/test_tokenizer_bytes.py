"""target_bytes: the UTF-8 bytes each target token stands for in context, so that a document's
targets (its eos included) sum to len(text.encode('utf-8')) + 1 for every tokenizer kind:
the byte tokenizer, byte-level BPE, a SentencePiece .model and Llama-2-style converted
SentencePiece tokenizer.json files (dummy prefix, '▁' spaces, <0xNN> byte fallback)."""
import io
import json
import types

import numpy as np
import pytest

from jaxbig.data.text import tokenizers
from jaxbig.data.text.tokenizer_training import train_bpe

WORDS = ('the', 'The', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'and', 'then',
         'there', 'was', 'a', 'cat', 'hello', 'world', 'café', 'x', '=', '1', 'again')
# never seen in training, so byte fallback: —, ï, ⚡, ü, ö, ✓, 日本語, the newline
DOCS = ['The café — naïve ⚡ fox.', 'the  quick   brown fox ', 'then ⚡⚡, again!',
        'ünïcödé ✓ and 日本語 text\nwith a newline', 'x', '  two leading spaces, the end',
        ' ', ' the fox']


def _corpus(n=3000):
    rng = np.random.default_rng(0)
    for _ in range(n):
        words = rng.choice(WORDS, rng.integers(3, 12))
        yield ''.join(w + (' ' if rng.random() < 0.9 else '  ') for w in words).strip() + '.'


def _document_sums(tok, docs, seq_len=7):
    """target_bytes summed over each document's tokens (its bos and eos included), the documents
    streamed as the LM data does (encode(doc), eos; after an eos) and cut into [rows, seq_len]
    inputs / targets."""
    encoded = [np.append(tok.encode(d), tok.eos_id) for d in docs]
    stream = np.concatenate([[tok.eos_id], *encoded]).astype(np.int32)
    n = len(stream) - 1
    rows = -(-n // seq_len)
    stream = np.concatenate([stream, np.full(rows * seq_len + 1 - len(stream), tok.eos_id)])
    inputs = np.stack([stream[r * seq_len:(r + 1) * seq_len] for r in range(rows)])
    targets = np.stack([stream[r * seq_len + 1:(r + 1) * seq_len + 1] for r in range(rows)])
    got = tok.target_bytes(inputs, targets)
    assert got.shape == targets.shape and got.dtype == np.int64
    starts = np.cumsum([0] + [len(e) for e in encoded[:-1]])
    return list(np.add.reduceat(got.reshape(-1)[:n], starts))


def _utf8(docs):
    return [len(d.encode('utf-8')) + 1 for d in docs]  # + the eos: 1 byte, the separator


def _train_sentencepiece(path, model_type):
    import sentencepiece

    buf = io.BytesIO()  # Llama-2's settings: dummy prefix, byte fallback, no normalisation
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_corpus(), model_writer=buf, model_type=model_type, vocab_size=400,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=True, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture(scope='module')
def sp_unigram(tmp_path_factory):
    return _train_sentencepiece(tmp_path_factory.mktemp('sp') / 'unigram.model', 'unigram')


def _llama_json(model_path, out, legacy):
    """The tokenizer.json transformers' LlamaConverter makes of a SentencePiece model, with
    LlamaTokenizerFast's BOS post-processor: legacy=True, Prepend('▁') + Replace(' ', '▁')
    normalizers (Llama-2's file); legacy=False, a Metaspace(prepend_scheme='first')."""
    import sentencepiece
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import LlamaConverter

    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    original = types.SimpleNamespace(vocab_file=model_path, legacy=legacy, add_prefix_space=True,
                                     convert_ids_to_tokens=sp.id_to_piece)
    tok = LlamaConverter(original).converted()
    tok.post_processor = processors.TemplateProcessing(single='<s> $A',
                                                       special_tokens=[('<s>', sp.bos_id())])
    tok.add_tokens([AddedToken('<sep>', normalized=False)])  # a non-special added token
    tok.save(str(out))
    return str(out)


@pytest.mark.parametrize('legacy', [True, False])
def test_llama_style_tokenizer_json(sp_unigram, tmp_path, legacy):
    tok = tokenizers.FileTokenizer(_llama_json(sp_unigram, tmp_path / 'tokenizer.json', legacy))
    spec = json.load(open(tok.path))
    assert spec['model']['byte_fallback'] and spec['decoder']['decoders'][-1]['type'] == 'Strip'
    ids = tok.encode('The café — naïve ⚡')
    pieces = [tok._tok.id_to_token(i) for i in ids]
    assert pieces[0] == '<s>' and '<0xE2>' in pieces and pieces[1].startswith('\u2581')
    table, bos, the = tok.token_bytes(), ids[0], tok._tok.token_to_id('\u2581the')
    assert table[tok._tok.token_to_id('\u2581')] == 1 and table[the] == 4  # ' the'
    assert table[tok._tok.token_to_id('<0xE2>')] == 1 and table[bos] == 0
    assert tok.target_bytes(np.array([[bos, the]]), np.array([[the, the]])).tolist() == [[3, 4]]
    docs = DOCS + ['a<sep>b', 'a <sep> the']  # text after an added token: a new segment
    if legacy:  # Prepend('▁') adds the dummy before every text: exact
        assert _document_sums(tok, docs) == _utf8(docs)
    else:  # Metaspace adds none before a leading space, so ' the' and 'the' encode alike
        starts = [d.startswith(' ') for d in docs]
        assert _document_sums(tok, docs) == [n - s for n, s in zip(_utf8(docs), starts)]
        assert list(tok.encode(' the fox')) == list(tok.encode('the fox'))


@pytest.mark.parametrize('model_type', ['bpe', 'unigram'])
def test_sentencepiece_model(tmp_path, model_type):
    path = _train_sentencepiece(tmp_path / 'sp.model', model_type)
    tok = tokenizers.SentencePieceTokenizer(path)
    assert _document_sums(tok, DOCS) == _utf8(DOCS)
    table, sp = tok.token_bytes(), tok._sp
    assert table[sp.piece_to_id('<0xE2>')] == 1 and table[sp.piece_to_id('\u2581')] == 1
    assert table[sp.bos_id()] == 0 and table[sp.eos_id()] == 1 and table[sp.unk_id()] == 1


@pytest.mark.parametrize('add_prefix_space', [False, True])
def test_byte_level_bpe(tmp_path, add_prefix_space):
    from tokenizers import Tokenizer, pre_tokenizers

    path = train_bpe(_corpus(), 400, str(tmp_path))
    if add_prefix_space:  # RoBERTa-style: a 'Ġ' before a text that starts with no space
        tok = Tokenizer.from_file(path)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.save(path)
    tok = tokenizers.FileTokenizer(path)
    docs = [d for d in DOCS if not (add_prefix_space and d.startswith(' '))]
    assert _document_sums(tok, docs) == _utf8(docs)
    text = ' '.join(DOCS)
    if not add_prefix_space:  # the context-free table is exact here
        assert tok.token_bytes()[tok.encode(text)].sum() == len(text.encode('utf-8'))


def test_byte_tokenizer():
    tok = tokenizers.ByteTokenizer()
    assert _document_sums(tok, DOCS) == _utf8(DOCS)
    assert (tok.token_bytes() == 1).all()


def test_wordpiece_counts_english_spacing(tmp_path):
    """WordPiece keeps no spaces: one before each word, none before . , ) or after (."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token='[UNK]'))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([*_corpus(), ', ( ) !'], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=['[UNK]', '[SEP]'], show_progress=False))
    tok.save(str(tmp_path / 'wordpiece.json'))
    tok = tokenizers.FileTokenizer(str(tmp_path / 'wordpiece.json'), eos_id=1)
    docs = ['The café was there, again (the lazy dog).', 'hello world x = 1!', 'brownish foxes']
    assert any(p.startswith('##') for d in docs for p in tok._tok.encode(d).tokens)
    assert _document_sums(tok, docs) == _utf8(docs)
    assert _document_sums(tok, ['a  b'])[0] == _utf8(['a b'])[0]  # spacing is not kept
