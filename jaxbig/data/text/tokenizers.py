"""Tokenizers: `ByteTokenizer` (UTF-8 bytes as ids, NUL (0) doubles as end-of-document),
`FileTokenizer` (a Hugging Face tokenizer.json), `SentencePieceTokenizer` (a `.model`).

Bits per byte. Every tokenizer has `target_bytes(inputs, targets)`: the UTF-8 bytes of the
text each target token stands for, in context (see `ByteCounting.target_bytes`), and
`token_bytes()`, the same count for a token in the middle of a document. A document's targets
sum to len(text.encode('utf-8')) + 1: its end-of-document token (`eos_id`) counts 1 byte, as
the byte tokenizer's NUL does, and every other special or control token (bos, pad, cls,
sep, mask) 0, so all tokenizers divide by the same bytes of the same text.
"""

import json
import re

import numpy as np

BYTE_PIECE = re.compile(r'<0x[0-9A-Fa-f]{2}>')  # a byte-fallback token: one byte
METASPACE = '\u2581'  # '▁': SentencePiece's space
BYTE_LEVEL_SPACE = '\u0120'  # 'Ġ': the space byte in GPT-2's byte-level alphabet
NO_SPACE_BEFORE = frozenset('.,!?;:)]}%')  # WordPiece: punctuation written against the word before
NO_SPACE_AFTER = frozenset('([{$')  # ... and against the word after


class ByteCounting:
    """`target_bytes` and `token_bytes` from three int64[vocab] tables a tokenizer's
    `_byte_tables()` builds once:

        count[v]  UTF-8 bytes of the text v stands for in the middle of a document, a space
                  the tokenizer may have added itself (`lead`) included
        lead[v]   1 where v's first byte is such a space: SentencePiece's dummy prefix '▁'
                  (or byte-level BPE's add_prefix_space 'Ġ'), a WordPiece word's separating space
        drops[v]  1 where the text after v has no such space: v is a document boundary
                  (special / control tokens: bos, eos, pad ...) or, for WordPiece, an opening
                  bracket
    """

    _tables = None

    def target_bytes(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """int64 [B, T]: the UTF-8 bytes of the text each target token stands for, in context
        (targets[b, t] is predicted after inputs[b, t], the previous token): count[target],
        less the leading space the tokenizer added itself when the previous token starts a
        document. Special tokens: `eos_id` counts 1 byte (the separator, as the byte
        tokenizer's NUL), an unknown token 1 (it stands for >= 1 character), bos / pad /
        other control tokens 0. Over a document's tokens, eos included, the sum is
        len(text.encode('utf-8')) + 1 exactly for the byte tokenizer, byte-level BPE
        (GPT-2 alphabet), SentencePiece `.model` files and SentencePiece-converted
        tokenizer.json files (Llama-2 / Mistral style: '▁' = a space byte, `<0xNN>` byte
        fallback = 1 byte, the dummy '▁' that starts a document's first piece = 0 bytes), with
        these limits, which the ids cannot tell apart:
          - a Metaspace pre-tokenizer (prepend_scheme 'first' / 'always') or byte-level
            add_prefix_space adds no dummy to a text that already starts with a space: such
            a document counts 1 byte short (a Prepend('▁') normalizer, Llama-2's legacy
            conversion, always adds it: exact);
          - normalisation that changes the text (NFKC, lowercasing, accent stripping,
            SentencePiece's remove_extra_whitespaces) counts the normalised text's bytes;
          - special-token strings written inside a document's text count as special tokens;
            SentencePiece's treat_whitespace_as_suffix is not modelled.
        WordPiece is approximate: spaces are not kept, so each word piece counts one space
        before it except at a document start, for a '##' continuation, for the punctuation
        `.,!?;:)]}%` and after `([{$` (English spacing; 'don't' or Chinese text come out
        wrong). Other tokenizer.json kinds (char-level BPE, WordLevel) count each token
        decoded alone."""
        count, lead, drops = self._byte_tables_once()
        targets = np.asarray(targets)
        return count[targets] - lead[targets] * drops[np.asarray(inputs)]

    def token_bytes(self) -> np.ndarray:
        """int64[vocab]: bytes each id stands for in the middle of a document (the context-free
        table of `target_bytes`: a leading '▁' counts its space)."""
        return self._byte_tables_once()[0].copy()

    def _byte_tables_once(self):
        if self._tables is None:
            self._tables = self._byte_tables()
        return self._tables


class ByteTokenizer(ByteCounting):
    """Byte-level tokenizer: id = UTF-8 byte value; `vocab_size` 256, `eos_id` 0.

    NUL never occurs in source text, so id 0 separates/terminates documents.
    """

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """str -> int32[n], n = number of UTF-8 bytes of `text` (no eos added; bytes have no
        special tokens to add, whatever `add_special_tokens`)."""
        return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """int array-like [...] -> str. Drops eos and ids outside [0, 256);
        invalid UTF-8 becomes U+FFFD."""
        ids = np.asarray(ids).reshape(-1)
        ids = ids[(ids > 0) & (ids < self.vocab_size)]
        return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')

    def _byte_tables(self):
        """1 byte each, eos (the separator) too; no token adds a space."""
        none = np.zeros(self.vocab_size, np.int64)
        return np.ones(self.vocab_size, np.int64), none, none

    def __repr__(self) -> str:
        return 'ByteTokenizer(vocab_size=256, eos_id=0)'


class FileTokenizer(ByteCounting):
    """A `tokenizer.json` (Hugging Face `tokenizers` format: BPE, WordPiece, Unigram) read
    with the `tokenizers` library. encode(text) -> int32 [n] (with the file's post-processor,
    e.g. a BOS, as transformers' tokenizer(text) adds it); decode(ids) -> str (special tokens
    kept, as transformers' decode). `eos_id`: the model's end-of-sequence id, or None."""

    EOS_TOKENS = ('<|endoftext|>', '</s>', '<eos>', '<|end_of_text|>')

    def __init__(self, path: str, eos_id: int | None = None):
        from tokenizers import Tokenizer

        self.path = path
        self._tok = Tokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        if eos_id is None:  # the file's own end-of-sequence token, if it has a usual one
            found = [self._tok.token_to_id(t) for t in self.EOS_TOKENS]
            eos_id = next((i for i in found if i is not None), None)
        self.eos_id = eos_id

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """With `add_special_tokens=False`, the file's post-processor (a BOS) is skipped, as
        transformers' tokenizer(text, add_special_tokens=False) skips it."""
        return np.asarray(self._tok.encode(text, add_special_tokens=add_special_tokens).ids,
                          np.int32)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """[encode(t) for t in texts], on the library's threads."""
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=False)

    def _byte_tables(self):
        """(count, lead, drops) of `ByteCounting`, read off the file's pipeline: byte-level
        pieces are one character per byte; Metaspace pieces ('▁' = a space) with byte
        fallback; WordPiece pieces (a space before each word); anything else decoded alone."""
        spec = json.loads(self._tok.to_str())
        model = spec['model']
        norms, pres, decs = (_parts(spec.get(k)) for k in ('normalizer', 'pre_tokenizer',
                                                            'decoder'))
        byte_level = any(p['type'] == 'ByteLevel' for p in norms + pres + decs)
        wordpiece = model['type'] == 'WordPiece'
        metaspace = next((p for p in pres + decs if p['type'] == 'Metaspace'), None)
        space = (metaspace or {}).get('replacement') or next(
            (p['content'] for p in norms if p['type'] == 'Replace'
             and p['pattern'].get('String') == ' '), None)
        # where the tokenizer adds a space of its own before a text (segment), if it does:
        # 'prepend' always; 'always' / 'first' unless the text starts with a space already
        scheme, lead_char = None, space
        if byte_level:
            lead_char = BYTE_LEVEL_SPACE
            if any(p['type'] == 'ByteLevel' and p.get('add_prefix_space') for p in pres):
                scheme = 'always'
        elif any(p['type'] == 'Prepend' and p['prepend'] == space for p in norms):
            scheme = 'prepend'
        elif metaspace is not None and metaspace in pres:
            scheme = metaspace.get('prepend_scheme') or (
                'always' if metaspace.get('add_prefix_space', True) else 'never')
            scheme = None if scheme == 'never' else scheme
        unk = model.get('unk_id')
        if unk is None and model.get('unk_token') is not None:
            unk = self._tok.token_to_id(model['unk_token'])
        added = self._tok.get_added_tokens_decoder()
        alphabet = _byte_level_alphabet() if byte_level else frozenset()
        prefix = model.get('continuing_subword_prefix') or '##'
        count, lead, drops = (np.zeros(self.vocab_size, np.int64) for _ in range(3))
        for v in range(self.vocab_size):
            piece = self._tok.id_to_token(v)
            if v in added:  # matched in the raw text: its content, or a boundary if special
                token = added[v]
                count[v] = (1 if v == unk else 0 if token.special
                            else len(token.content.encode('utf-8')))
                # the text after it is a new segment: it gets the dummy again, unless 'first';
                # an unknown token stands for text the model could not read: no boundary
                drops[v] = v != unk and (token.special or scheme == 'always' or (
                    scheme == 'prepend' and not token.normalized))
            elif piece is None:
                continue
            elif v == unk or (model.get('byte_fallback') and BYTE_PIECE.fullmatch(piece)):
                count[v] = 1
            elif byte_level:
                count[v] = sum(1 if c in alphabet else len(c.encode('utf-8')) for c in piece)
                lead[v] = scheme is not None and piece.startswith(lead_char)
            elif wordpiece:
                word = not piece.startswith(prefix)
                text = piece if word else piece[len(prefix):]
                lead[v] = word and text not in NO_SPACE_BEFORE
                count[v] = len(text.encode('utf-8')) + lead[v]
                drops[v] = word and text in NO_SPACE_AFTER
            elif space:
                count[v] = len(piece.replace(space, ' ').encode('utf-8'))
                lead[v] = scheme is not None and piece.startswith(lead_char)
            else:
                count[v] = len(self._tok.decode([v]).encode('utf-8'))
        if self.eos_id is not None:
            count[self.eos_id] = drops[self.eos_id] = 1
        return count, lead, drops

    def __repr__(self) -> str:
        return f'FileTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})'


class SentencePieceTokenizer(ByteCounting):
    """A SentencePiece `.model` file (the `sentencepiece` library): encode(text) -> int32 [n]
    (no bos/eos added), decode(ids) -> str; eos_id: the model's </s> (or `eos_id`)."""

    def __init__(self, path: str, eos_id: int | None = None):
        import sentencepiece

        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._sp.get_piece_size()
        own = self._sp.eos_id()
        self.eos_id = eos_id if eos_id is not None else (own if own >= 0 else None)

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """(No bos / eos is added either way.)"""
        return np.asarray(self._sp.encode(text), np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """[encode(t) for t in texts], on the library's threads."""
        return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def _byte_tables(self):
        """(count, lead, drops) of `ByteCounting`: pieces with '▁' = a space, <0xNN> byte
        pieces and unknown pieces 1, control pieces (bos, eos, pad) 0 and document
        boundaries; with add_dummy_prefix a piece's leading '▁' is the dummy at a start."""
        sp = self._sp
        dummy = ''.join(sp.encode('a', out_type=str)).startswith(METASPACE)
        count, lead, drops = (np.zeros(self.vocab_size, np.int64) for _ in range(3))
        for v in range(self.vocab_size):
            if sp.is_control(v):
                drops[v] = 1
            elif sp.is_unknown(v) or sp.is_byte(v):
                count[v] = 1
            else:
                piece = sp.id_to_piece(v)
                count[v] = len(piece.replace(METASPACE, ' ').encode('utf-8'))
                lead[v] = dummy and piece.startswith(METASPACE)
        if self.eos_id is not None:
            count[self.eos_id] = drops[self.eos_id] = 1
        return count, lead, drops

    def __repr__(self) -> str:
        return (f'SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size}, '
                f'eos_id={self.eos_id})')


def _parts(component) -> list[dict]:
    """A tokenizer.json normalizer / pre_tokenizer / decoder as its flat list of parts
    (Sequences opened), [] for null."""
    if not component:
        return []
    for key in ('normalizers', 'pretokenizers', 'decoders'):
        if key in component:
            return [p for sub in component[key] for p in _parts(sub)]
    return [component]


def _byte_level_alphabet() -> frozenset:
    """The 256 characters of GPT-2's byte-level alphabet, one per byte."""
    from tokenizers import pre_tokenizers

    return frozenset(pre_tokenizers.ByteLevel.alphabet())


def from_config(data_config):
    """The tokenizer a data section names: `data.tokenizer` = 'bytes' (the default, also when
    absent), the path of a tokenizer.json (Hugging Face `tokenizers`) or of a SentencePiece
    `.model`. `data.eos_id` (-1 = the file's own end-of-sequence token) separates documents."""
    import os

    from jaxbig.config import ConfigError

    name = data_config.get('tokenizer', 'bytes')
    if name in ('bytes', 'byte'):
        return ByteTokenizer()
    kinds = {'.json': FileTokenizer, '.model': SentencePieceTokenizer}
    kind = next((k for ext, k in kinds.items() if str(name).endswith(ext)), None)
    if kind is None:
        raise ConfigError(f"data.tokenizer={name!r}: expected 'bytes', a tokenizer.json or a "
                          'SentencePiece .model path')
    if not os.path.isfile(name):
        raise ConfigError(f'data.tokenizer={name!r}: no such file')
    eos = data_config.get('eos_id', -1)
    return kind(name, None if eos is None or eos < 0 else int(eos))
