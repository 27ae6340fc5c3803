"""Caption tokenizers: text -> int32 [max_len] with eos and padding.

`WordTokenizer`: a word-level vocabulary, built from the `shapes` caption grammar by
default (every word any caption can contain), so it never meets an unknown word there.

    ids: 0 = <pad>, 1 = <eos>, 2 = <unk>, 3.. = the vocabulary's words in sorted order
    encode('a small red circle in the center', max_len=10)
        -> [a, small, red, circle, in, the, center, <eos>, <pad>, <pad>]

Text is lower-cased and split on whitespace; a caption longer than max_len - 1 words is
truncated so that the eos always fits. Text encoders pool at the eos (the first
`eos_id`) or over the non-pad tokens.

`FileCaptionTokenizer`: a model's own `tokenizer.json` (an imported CLIP's: `data.tokenizer`
= its path, `data.eos_id` the id the text tower pools at), read with the `tokenizers`
library as transformers' tokenizer(text, padding='max_length', truncation=True) reads it:
the file's post-processor adds CLIP's <|startoftext|> ... <|endoftext|>; a longer text keeps
its first max_len - 2 tokens between them (the eos always fits); padding is the file's pad
id, else the eos (CLIP's pad token is its <|endoftext|>).
"""

from __future__ import annotations

import numpy as np

from jaxbig.data.builders import shapes


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


class FileCaptionTokenizer:
    """A tokenizer.json as caption tokenizer (see the module docstring); `eos_id` None = the
    file's own end-of-sequence token (`tokenizers.FileTokenizer.EOS_TOKENS`)."""

    def __init__(self, path: str, eos_id: int | None = None):
        import json

        from jaxbig.config import ConfigError
        from jaxbig.data.text.tokenizers import FileTokenizer

        self.file = FileTokenizer(path, eos_id)
        self.vocab_size = self.file.vocab_size
        if self.file.eos_id is None:
            raise ConfigError(f'data.tokenizer={path!r}: no end-of-sequence token found; set '
                              'data.eos_id (the id the text tower pools at)')
        self.eos_id = int(self.file.eos_id)
        spec = json.loads(self.file._tok.to_str())
        self.pad_id = int((spec.get('padding') or {}).get('pad_id', self.eos_id))
        self.word_suffix = (spec.get('model') or {}).get('end_of_word_suffix') or ''  # '</w>'

    def encode(self, text: str, max_len: int) -> np.ndarray:
        """str -> int32 [max_len]: the file's ids (bos, tokens, eos), truncated, then pad."""
        if isinstance(text, bytes):  # TFDS Text features read back as bytes
            text = text.decode('utf-8')
        ids = [int(i) for i in self.file.encode(text)]
        if not ids or ids[-1] != self.eos_id:  # a post-processor that adds no eos
            ids.append(self.eos_id)
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [self.eos_id]
        return np.array(ids + [self.pad_id] * (max_len - len(ids)), np.int32)

    def encode_batch(self, texts, max_len: int) -> np.ndarray:
        """sequence of n str -> int32 [n, max_len]."""
        rows = [self.encode(t, max_len) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, max_len), np.int32)

    def decode(self, ids) -> str:
        """int [max_len] -> the text before the first eos (special tokens dropped)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
        text = self.file._tok.decode(ids, skip_special_tokens=True)
        return text.replace(self.word_suffix, ' ').strip() if self.word_suffix else text


TOKENIZERS = {'words': WordTokenizer, 'bytes': ByteCaptionTokenizer}


def get_tokenizer(name: str, eos_id: int = -1):
    """'words' | 'bytes' | the path of a tokenizer.json (`FileCaptionTokenizer`, with
    `eos_id`, -1 = the file's own)."""
    import os

    from jaxbig.config import ConfigError

    if str(name).endswith('.json'):
        if not os.path.isfile(name):
            raise ConfigError(f'data.tokenizer={name!r}: no such file')
        return FileCaptionTokenizer(name, None if eos_id is None or eos_id < 0 else int(eos_id))
    if name not in TOKENIZERS:
        raise ValueError(f'data.tokenizer={name!r}: expected one of {sorted(TOKENIZERS)} or a '
                         'tokenizer.json path')
    return TOKENIZERS[name]()
