"""Tokenizers. `ByteTokenizer`: UTF-8 bytes as ids, NUL (0) doubles as end-of-document."""

import json

import numpy as np


class ByteTokenizer:
    """Byte-level tokenizer: id = UTF-8 byte value; `vocab_size` 256, `eos_id` 0.

    NUL never occurs in source text, so id 0 separates/terminates documents.
    """

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> np.ndarray:
        """str -> int32[n], n = number of UTF-8 bytes of `text` (no eos added)."""
        return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """int array-like [...] -> str. Drops eos and ids outside [0, 256);
        invalid UTF-8 becomes U+FFFD."""
        ids = np.asarray(ids).reshape(-1)
        ids = ids[(ids > 0) & (ids < self.vocab_size)]
        return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')

    def token_bytes(self) -> np.ndarray:
        """int64[vocab]: UTF-8 bytes each id stands for (1 each; eos, the separator, too)."""
        return np.ones(self.vocab_size, np.int64)

    def __repr__(self) -> str:
        return 'ByteTokenizer(vocab_size=256, eos_id=0)'


class FileTokenizer:
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

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """[encode(t) for t in texts], on the library's threads."""
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """int64[vocab]: UTF-8 bytes of text each id stands for, for bits per byte. Byte-level
        BPE tokens are one character per byte (GPT-2's alphabet); others are measured by
        decoding the token alone. Special tokens (eos, bos, pad) count 1 byte, as the
        document separator does for the byte tokenizer, so runs with either compare."""
        byte_level = 'ByteLevel' in json.dumps(json.loads(self._tok.to_str()).get('decoder'))
        special = {t.content for t in self._tok.get_added_tokens_decoder().values()
                   if t.special}
        out = np.ones(self.vocab_size, np.int64)
        for v in range(self.vocab_size):
            piece = self._tok.id_to_token(v)
            if piece is None or piece in special:
                continue
            out[v] = len(piece) if byte_level else len(self._tok.decode([v]).encode('utf-8'))
        return out

    def __repr__(self) -> str:
        return f'FileTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})'


class SentencePieceTokenizer:
    """A SentencePiece `.model` file (the `sentencepiece` library): encode(text) -> int32 [n]
    (no bos/eos added), decode(ids) -> str; eos_id: the model's </s> (or `eos_id`)."""

    def __init__(self, path: str, eos_id: int | None = None):
        import sentencepiece

        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._sp.get_piece_size()
        own = self._sp.eos_id()
        self.eos_id = eos_id if eos_id is not None else (own if own >= 0 else None)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """[encode(t) for t in texts], on the library's threads."""
        return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def token_bytes(self) -> np.ndarray:
        """int64[vocab]: bytes per piece (▁ = a space; <0xNN> byte pieces 1; control and
        unknown pieces 1, as the byte tokenizer's separator)."""
        out = np.ones(self.vocab_size, np.int64)
        for v in range(self.vocab_size):
            if self._sp.is_control(v) or self._sp.is_unknown(v) or self._sp.is_byte(v):
                continue
            out[v] = len(self._sp.id_to_piece(v).replace('\u2581', ' ').encode('utf-8'))
        return out

    def __repr__(self) -> str:
        return (f'SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size}, '
                f'eos_id={self.eos_id})')


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
