"""Tokenizers. `ByteTokenizer`: UTF-8 bytes as ids, NUL (0) doubles as end-of-document."""

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

    def __repr__(self) -> str:
        return 'ByteTokenizer(vocab_size=256, eos_id=0)'


def from_config(data_config):
    """The tokenizer a data section names (`data.tokenizer`; absent = 'bytes')."""
    from jaxbig.config import ConfigError

    name = data_config.get('tokenizer', 'bytes')
    if name in ('bytes', 'byte'):
        return ByteTokenizer()
    raise ConfigError(f"data.tokenizer={name!r}: expected 'bytes'")
