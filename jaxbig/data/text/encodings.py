"""Stream encodings: how a document's raw bytes become the tokens of the LM stream, for the
length index and the token cache (jaxbig.data.text.documents, jaxbig.data.text.token_cache).

    encoding(raw bytes) -> tokens [n]      the document's tokens, eos last; [] = skipped
    encoding.lengths(docs) -> int64 [d]    len(encoding(doc)) of each
    encoding.encode_many(docs) -> [tokens] batched where the tokenizer allows
    encoding.name                          keys cached files (a tokenizer's content hash)
"""

from __future__ import annotations

import hashlib

import numpy as np


class ByteEncoding:
    """A record's stream tokens: its UTF-8 bytes without NUL, then eos (NUL); uint8."""

    name, dtype, eos_id = 'bytes', np.uint8, 0

    def __call__(self, raw: bytes) -> np.ndarray:
        return np.frombuffer(raw.replace(b'\0', b'') + b'\0', np.uint8)

    def lengths(self, docs: list[bytes]) -> np.ndarray:
        n = np.array([len(d) - d.count(0) for d in docs], np.int64)
        return np.where(n > 0, n + 1, 0)

    def encode_many(self, docs: list[bytes]) -> list[np.ndarray]:
        """Each record's stream tokens (empty for a skipped record: `lengths` of them)."""
        return [self(d) if n else np.zeros(0, self.dtype)
                for d, n in zip(docs, self.lengths(docs), strict=True)]


class TokenizerEncoding:
    """A record's stream tokens from a tokenizer (`jaxbig.data.text.tokenizers.FileTokenizer`):
    encode(text without NUL), then `eos_id`; int32. `name` carries the tokenizer file's
    content hash, so length indexes of different tokenizers never mix."""

    dtype = np.int32

    def __init__(self, tokenizer):
        if tokenizer.eos_id is None:
            raise ValueError(f'data.eos_id: {tokenizer!r} needs an end-of-sequence id to '
                             'separate documents')
        self.tokenizer, self.eos_id = tokenizer, int(tokenizer.eos_id)
        with open(tokenizer.path, 'rb') as f:
            self.name = f'tokenizer-{hashlib.sha1(f.read()).hexdigest()[:12]}-eos{self.eos_id}'

    def __call__(self, raw: bytes) -> np.ndarray:
        text = raw.replace(b'\0', b'').decode('utf-8', errors='replace')
        if not text:
            return np.zeros(0, np.int32)
        return np.append(self.tokenizer.encode(text), self.eos_id).astype(np.int32)

    def lengths(self, docs: list[bytes]) -> np.ndarray:
        return np.array([len(a) for a in self.encode_many(docs)], np.int64)

    def encode_many(self, docs: list[bytes]) -> list[np.ndarray]:
        """[self(d) for d in docs], batched through the tokenizer when it can (threads)."""
        texts = [d.replace(b'\0', b'').decode('utf-8', errors='replace') for d in docs]
        batch = getattr(self.tokenizer, 'encode_batch', None)
        kept = [t for t in texts if t]
        ids = iter(batch(kept) if batch else [self.tokenizer.encode(t) for t in kept])
        return [np.append(next(ids), self.eos_id).astype(np.int32) if t
                else np.zeros(0, np.int32) for t in texts]


BYTES = ByteEncoding()


def encoding_for(tokenizer: str = 'bytes', eos_id: int = -1):
    """The stream encoding of a data section's `tokenizer` / `eos_id` (see data.text.tokenizers)."""
    if tokenizer in ('bytes', 'byte'):
        return BYTES
    from jaxbig.data.text import tokenizers

    return TokenizerEncoding(tokenizers.from_config({'tokenizer': tokenizer, 'eos_id': eos_id}))
