"""A whole epoch's shuffle at once: the permutation `grain.MapDataset.range(n).shuffle(seed)`
visits, as one int64 [n] NumPy array computed in a few vectorised passes.

    order = epoch_permutation(n, seed)      # == [ds.shuffle(seed=seed)[k] for k in range(n)]

grain shuffles by index (`ShuffleMapDataset`): element k of an epoch is
`index_shuffle(k, max_index=n - 1, seed, rounds=4)`, a cycle-walking Simon block cipher
over B-bit blocks (B = max(16, ceil(log2(n - 1)) rounded up to even), with round keys from
C++'s `std::seed_seq{seed}`. grain computes that one index per call (3-8 us each on this
2-core machine), so a whole epoch of the tiny test LM's 900 k packed sequences took
seconds; the same cipher over NumPy arrays gives grain's order exactly (tests/test_prefetch.py
compares them element for element, and the key words with libstdc++'s) in 0.04 s for the
default LM's 233 k sequences and ~0.2-0.5 s per million, so pipelines keep one array per
epoch and index it.

Faithful to grain where grain is odd: at n = 2**k + 1 for even k >= 16 the block cannot hold
n - 1, and grain's "shuffle" repeats one element and drops another; so does this.
"""

from __future__ import annotations

import math

import numpy as np

MIN_BLOCK_BITS = 16  # grain's kMinBlockSize
ROUNDS = 4  # what grain's ShuffleMapDataset asks for
TABLE_BITS = 20  # blocks up to this size are tabulated (2**20 values, 8 MB)
_U32 = 0xFFFFFFFF


def seed_seq_keys(seed: int, count: int) -> list[int]:
    """The `count` uint32 words C++'s `std::seed_seq{seed}.generate` writes (the algorithm
    the C++ standard specifies in [rand.util.seedseq]); grain's round keys."""
    n, v = count, [int(seed) & _U32]
    s = len(v)
    out = [0x8B8B8B8B] * n
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p, m = (n - t) // 2, max(s + 1, n)
    q = p + t

    def mix(x):
        return (x ^ (x >> 27)) & _U32

    for k in range(m):
        r1 = (1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])) & _U32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1]) if k <= s else k % n)) & _U32
        out[(k + p) % n] = (out[(k + p) % n] + r1) & _U32
        out[(k + q) % n] = (out[(k + q) % n] + r2) & _U32
        out[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & _U32)) & _U32
        r4 = (r3 - k % n) & _U32
        out[(k + p) % n] ^= r3
        out[(k + q) % n] ^= r4
        out[k % n] = r4
    return out


def block_bits(max_index: int) -> int:
    """grain's block size B for indices 0 .. max_index (max_index >= 1)."""
    bits = math.ceil(math.log2(max_index))
    return min(max(bits + bits % 2, MIN_BLOCK_BITS), 64)


def simon_encrypt(values: np.ndarray, keys: list[int], word_bits: int,
                  chunk: int = 1 << 16) -> np.ndarray:
    """uint64 [m] blocks of 2 * word_bits bits -> uint64 [m], their Simon encryptions
    (grain's `simon_encrypt<W>`: rounds in pairs, key words truncated to W bits). Works in
    cache-sized chunks on uint32 halves (uint64 above 24-bit words)."""
    dtype = np.uint32 if word_bits <= 24 else np.uint64
    mask = (1 << word_bits) - 1
    shifts = [(dtype(r), dtype(word_bits - r)) for r in (1, 8, 2)]
    round_keys = [(dtype(k1 & mask), dtype(k2 & mask)) for k1, k2 in zip(keys[0::2], keys[1::2])]
    m, w64 = dtype(mask), np.uint64(word_bits)

    def f(x):  # (x <<< 1 & x <<< 8) ^ x <<< 2
        a, b, c = (((x << s) | (x >> t)) & m for s, t in shifts)
        return (a & b) ^ c

    out = np.empty(len(values), np.uint64)
    for lo in range(0, len(values), chunk):
        v = values[lo:lo + chunk]
        left = ((v >> w64) & np.uint64(mask)).astype(dtype)
        right = (v & np.uint64(mask)).astype(dtype)
        for k1, k2 in round_keys:
            left ^= f(right)
            left ^= k1
            right ^= f(left)
            right ^= k2
        out[lo:lo + chunk] = (left.astype(np.uint64) << w64) | right
    return out


def epoch_permutation(n: int, seed: int) -> np.ndarray:
    """int64 [n]: element k is `grain.MapDataset.range(n).shuffle(seed=seed)[k]`, for
    0 <= seed < 2**32 (grain's range).

    Cycle walking re-encrypts until the value is <= n - 1. With blocks of up to TABLE_BITS
    bits (n up to ~10**6) the walk from a value can be long (~2**16 / n steps for small n),
    so the whole block's cipher is tabulated and walked by pointer jumping (~log2 of the
    longest walk passes); larger n fill more than a quarter of their block and walk a few
    steps, re-encrypting only the values still outside.
    """
    if n < 1:
        raise ValueError(f'cannot shuffle {n} elements')
    if not 0 <= seed < 2**32:
        raise ValueError(f'shuffle seed {seed} not in [0, 2**32)')
    if n == 1:
        return np.zeros(1, np.int64)
    max_index = n - 1
    keys, bits = seed_seq_keys(seed, ROUNDS), block_bits(max_index)
    out = simon_encrypt(np.arange(n, dtype=np.uint64), keys, bits // 2)
    if bits <= TABLE_BITS:
        # jump[y]: y's successor on the cipher's cycles, then the first value <= max_index
        # after y (doubling the distance looked ahead on each pass)
        jump = simon_encrypt(np.arange(2**bits, dtype=np.uint64), keys, bits // 2)
        walking = out > max_index
        while (jump[out[walking]] > max_index).any():
            far = jump > max_index
            jump[far] = jump[jump[far]]
        out[walking] = jump[out[walking]]
        return out.astype(np.int64)
    walking = np.flatnonzero(out > max_index)
    while len(walking):
        out[walking] = simon_encrypt(out[walking], keys, bits // 2)
        walking = walking[out[walking] > max_index]
    return out.astype(np.int64)
