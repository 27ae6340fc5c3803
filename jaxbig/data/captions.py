"""Caption tokenizers: text -> int32 [max_len] with eos and padding.

`WordTokenizer`: a word-level vocabulary, built from the `shapes` caption grammar by
default (every word any caption can contain), so it never meets an unknown word there.

    ids: 0 = <pad>, 1 = <eos>, 2 = <unk>, 3.. = the vocabulary's words in sorted order
    encode('a small red circle in the center', max_len=10)
        -> [a, small, red, circle, in, the, center, <eos>, <pad>, <pad>]

Text is lower-cased and split on whitespace; a caption longer than max_len - 1 words is
truncated so that the eos always fits. Text encoders pool at the eos (the first
`eos_id`) or over the non-pad tokens.
"""

from __future__ import annotations

import numpy as np

from jaxbig.data import shapes


def shapes_words() -> list[str]:
    words = {'a', *shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES}
    for position in shapes.POSITIONS:
        words.update(position.split())
    return sorted(words)


class WordTokenizer:
    pad_id, eos_id, unk_id = 0, 1, 2
    SPECIAL = ('<pad>', '<eos>', '<unk>')

    def __init__(self, words=None):
        words = shapes_words() if words is None else sorted(set(words))
        self.vocab = list(self.SPECIAL) + words
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> np.ndarray:
        """str -> int32 [max_len]: word ids, eos, then pad."""
        words = text.lower().split()[: max_len - 1]
        ids = [self.ids.get(w, self.unk_id) for w in words] + [self.eos_id]
        return np.array(ids + [self.pad_id] * (max_len - len(ids)), np.int32)

    def encode_batch(self, texts, max_len: int) -> np.ndarray:
        """sequence of n str -> int32 [n, max_len]."""
        return np.stack([self.encode(t, max_len) for t in texts]) if len(texts) else np.zeros(
            (0, max_len), np.int32
        )

    def decode(self, ids) -> str:
        """int [max_len] -> the words before the first eos (pad and specials dropped)."""
        out = []
        for i in np.asarray(ids).reshape(-1):
            if i == self.eos_id:
                break
            if i >= len(self.SPECIAL):
                out.append(self.vocab[i])
        return ' '.join(out)


class ByteCaptionTokenizer:
    """UTF-8 bytes shifted by 2 (0 = pad, 1 = eos); vocab 258. For free-form captions
    (coco_captions) where no grammar is known."""

    pad_id, eos_id, vocab_size = 0, 1, 258

    def encode(self, text: str, max_len: int) -> np.ndarray:
        ids = list(np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + 2)
        ids = ids[: max_len - 1] + [self.eos_id]
        return np.array(ids + [self.pad_id] * (max_len - len(ids)), np.int32)

    def encode_batch(self, texts, max_len: int) -> np.ndarray:
        return np.stack([self.encode(t, max_len) for t in texts])

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
        return bytes(i - 2 for i in ids if i >= 2).decode('utf-8', errors='replace')


TOKENIZERS = {'words': WordTokenizer, 'bytes': ByteCaptionTokenizer}


def get_tokenizer(name: str):
    if name not in TOKENIZERS:
        raise ValueError(f'data.tokenizer={name!r}: expected one of {sorted(TOKENIZERS)}')
    return TOKENIZERS[name]()
