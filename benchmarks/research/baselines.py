"""Bits-per-byte baselines of a byte stream: n-gram models and general-purpose compressors.

All figures are bits per byte of the evaluated stream (uint8 [n]); the LM evaluator's
`val/bits_per_byte` is on the same scale (jaxbig/evals/loss.py: eos = one byte).

    unigram_bpb(train, val)      cross-entropy of val under train's byte frequencies
    bigram_bpb(train, val)       ... under train's P(b | previous byte)
    empirical_entropy_bpb(val)   val's own plug-in unigram entropy (a lower bound no
                                 context-free model fitted elsewhere can beat on val)
    compressed_bpb(val, codec)   8 * len(compress(val)) / len(val); 'zlib' = zlib level 9,
                                 'xz' = lzma preset 9 | PRESET_EXTREME (xz -9e)

The n-gram models are fitted on the train stream and add-one (Laplace) smoothed over the 256
byte values, so a byte never seen in train still has finite cost. A stream's first byte is
conditioned on eos (NUL): every document of the virtual stream follows one.
"""

from __future__ import annotations

import lzma
import zlib

import numpy as np

VOCAB = 256
EOS = 0  # jaxbig.data.text.tokenizers.ByteTokenizer.eos_id: the document separator
CODECS = {
    'zlib': lambda b: zlib.compress(b, 9),
    'xz': lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def _as_bytes(stream) -> np.ndarray:
    return np.frombuffer(stream, np.uint8) if isinstance(stream, (bytes, bytearray)) else (
        np.asarray(stream, np.uint8).reshape(-1))


def unigram_counts(stream) -> np.ndarray:
    """uint8 [n] -> int64 [256] byte counts."""
    return np.bincount(_as_bytes(stream), minlength=VOCAB).astype(np.int64)


def bigram_counts(stream) -> np.ndarray:
    """uint8 [n] -> int64 [256, 256]: counts[a, b] of byte b following byte a (the first byte
    follows EOS)."""
    s = _as_bytes(stream).astype(np.int64)
    prev = np.concatenate([[EOS], s[:-1]])
    return np.bincount(prev * VOCAB + s, minlength=VOCAB * VOCAB).reshape(VOCAB, VOCAB)


def empirical_entropy_bpb(stream) -> float:
    """Plug-in entropy of the stream's own byte frequencies, bits per byte."""
    counts = unigram_counts(stream)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_bpb(train, val) -> float:
    """Mean -log2 P(byte) over val, P = add-one smoothed byte frequencies of train."""
    counts = unigram_counts(train) + 1.0
    log_p = np.log2(counts / counts.sum())
    return float(-(unigram_counts(val) * log_p).sum() / len(_as_bytes(val)))


def bigram_bpb(train, val) -> float:
    """Mean -log2 P(byte | previous byte) over val, P = add-one smoothed bigram frequencies
    of train: (count(a, b) + 1) / (count(a) + 256)."""
    counts = bigram_counts(train) + 1.0
    log_p = np.log2(counts / counts.sum(axis=1, keepdims=True))
    return float(-(bigram_counts(val) * log_p).sum() / len(_as_bytes(val)))


def compressed_bpb(stream, codec: str) -> float:
    """8 * compressed size / raw size (bits per byte) with `codec` in CODECS."""
    if codec not in CODECS:
        raise ValueError(f'codec {codec!r}: expected one of {list(CODECS)}')
    raw = _as_bytes(stream).tobytes()
    return 8.0 * len(CODECS[codec](raw)) / len(raw)


def all_baselines(train, val) -> dict[str, float]:
    """Every baseline above, bits per byte of `val` (n-grams fitted on `train`)."""
    return {
        'unigram': unigram_bpb(train, val),
        'bigram': bigram_bpb(train, val),
        'val_unigram_entropy': empirical_entropy_bpb(val),
        'zlib_9': compressed_bpb(val, 'zlib'),
        'xz_9e': compressed_bpb(val, 'xz'),
    }
