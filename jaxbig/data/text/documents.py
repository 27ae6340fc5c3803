"""Documents of a text split: records, the length index, the Corpus.

A split is a list of records (TFDS examples or folder files). Document bytes are the
record's text UTF-8 encoded with NUL bytes removed; a document is followed by eos (NUL,
`ByteTokenizer.eos_id`, or a tokenizer's) and empty documents are skipped. The split's token
stream is the concatenation of its documents, each with its eos: a per-split *length index*
`ends` int64[num_records] (cumulative document lengths incl. eos, 0 for a skipped record)
locates any token, and the stream itself is cached once (`jaxbig.data.text.token_cache`), so
reading a window slices a memory-mapped array. Without that cache (a Corpus built from
records and ends only) the documents a reader needs are read through the random-access
TFDS data source (or the folder's files) and encoded, with an LRU cache (`CACHE_BYTES`).

    TfdsDocuments(builder, split, text_key)  records of a TFDS split: read(ids) -> list[bytes]
    FolderDocuments(root, split)             the same for the files of a folder's split
    load_index(documents)                    ends int64[num_records], cached on disk (TFDS)
    Corpus(records, ends, tokens=None)       the stream: doc_ids / doc_starts / doc_lengths
                                             int64[d], read(starts, length) -> [n, length],
                                             documents(records)
    (token_cache.load_corpus(name, split, data_dir, ...): the Corpus of a split, its
     index and token ids cached — above this module, which it reads)

The index of a TFDS split is computed once (by `jaxbig.data.pipelines.lm.prepare`, i.e. process 0
before training, or by the first pipeline that needs it), with the token ids, and cached
next to the prepared data as `<dataset dir>/jaxbig-index.<split>.<text_key>.<hash>.npy`
(+ `.json`, its fingerprint), written atomically and memory-mapped when read; a missing,
stale or corrupt index is rebuilt. A folder's is computed in memory."""

import collections
import functools
import hashlib
import json
import logging
import os
import re
import tempfile

import numpy as np

from jaxbig.data import tfds_sources
from jaxbig.data.builders import pystdlib
from jaxbig.data.text.encodings import (  # noqa: F401
    BYTES,
    ByteEncoding,
    TokenizerEncoding,
    encoding_for,
)

EMBEDDED = {'pystdlib': pystdlib.Pystdlib}
INDEX_FORMAT = 1
CACHE_BYTES = 64 << 20  # decoded documents kept per split and process (LRU)
SPOT_CHECKS = 8  # records re-measured when a cached index is opened


resolve_data_dir = tfds_sources.resolve_data_dir
_not_prepared = tfds_sources.not_prepared
_tfds_builder = tfds_sources.open_builder


# ------------------------------------------------------------------- Records


class TfdsDocuments:
    """Random access to the raw text of one TFDS split: read(ids) -> list[bytes]."""

    def __init__(self, builder, split: str, text_key: str):
        self.source, split = tfds_sources.data_source(builder, split)
        self.split, self.text_key = split, text_key
        try:
            num_bytes = int(builder.info.splits[split].num_bytes)
        except Exception:  # noqa: BLE001 (unknown for some split specs)
            num_bytes = -1
        # Identifies the records an index was computed from (json-compatible values only).
        self.fingerprint = {
            'dataset': builder.info.full_name,
            'split': split,
            'text_key': text_key,
            'num_records': len(self.source),
            'num_bytes': num_bytes,
        }
        self.cache_dir = os.fspath(builder.data_dir)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, ids) -> list[bytes]:
        ids = [int(i) for i in ids]
        if len(ids) > 64 and hasattr(self.source, '__getitems__'):  # a thread pool per call
            items = self.source.__getitems__(ids)
        else:
            items = [self.source[i] for i in ids]
        out = []
        for item in items:
            if self.text_key not in item:
                raise ValueError(
                    f'data.text_key={self.text_key!r} not in dataset features {sorted(item)}'
                )
            text = item[self.text_key]
            out.append(text.encode('utf-8') if isinstance(text, str) else bytes(text))
        return out


class FolderDocuments:
    """The files of one split of a folder (hidden entries skipped, sorted '/'-paths, split by
    `pystdlib.split_for_path`); a file that is not UTF-8 or holds NUL reads as b''."""

    fingerprint = None  # folders change freely: the index is not cached on disk
    cache_dir = None

    def __init__(self, root: str, split: str):
        if split not in ('train', 'validation'):
            raise ValueError(
                f"data split {split!r}: folder datasets only have 'train' and 'validation'"
            )
        self.root = root
        self.paths = [
            rel
            for rel in pystdlib.walk_files(root, skip_hidden=True)
            if pystdlib.split_for_path(rel) == split
        ]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, ids) -> list[bytes]:
        texts = (pystdlib.read_text(os.path.join(self.root, self.paths[i])) for i in ids)
        return [b'' if t is None else t.encode('utf-8') for t in texts]


# ------------------------------------------------------------------- Length index




def _token_lengths(docs: list[bytes], encoding=BYTES) -> np.ndarray:
    """int64[n]: stream length of each record (its tokens plus eos); 0 if empty."""
    return encoding.lengths(docs)


def compute_ends(documents, chunk: int = 1024, encoding=BYTES, sink=None) -> np.ndarray:
    """ends int64[num_records]: cumulative stream lengths (one pass over every record).
    `sink(list of each record's tokens)`, if given, receives the stream in order."""
    lengths = np.zeros(len(documents), np.int64)
    for start in range(0, len(documents), chunk):
        stop = min(len(documents), start + chunk)
        docs = documents.read(range(start, stop))
        if sink is None:
            lengths[start:stop] = _token_lengths(docs, encoding)
        else:
            encoded = encoding.encode_many(docs)
            lengths[start:stop] = [len(a) for a in encoded]
            sink(encoded)
    return np.cumsum(lengths)


def index_paths(documents, encoding=BYTES) -> tuple[str, str]:
    """(.npy, .json) paths of the cached index of `documents` (a TFDS split)."""
    key = f"{documents.fingerprint['split']}.{documents.fingerprint['text_key']}"
    if encoding.name != 'bytes':
        key += f'.{encoding.name}'
    slug = re.sub(r'[^\w.-]', '_', key)[:80]
    stem = f'jaxbig-index.{slug}.{hashlib.sha1(key.encode()).hexdigest()[:8]}'
    stem = os.path.join(documents.cache_dir, stem)
    return stem + '.npy', stem + '.json'


def _lengths_at(ends: np.ndarray, ids: np.ndarray) -> np.ndarray:
    prev = np.where(ids > 0, ends[np.maximum(ids - 1, 0)], 0)
    return ends[ids] - prev


def _open_index(documents, npy: str, meta: str, encoding=BYTES, spot_check=True) -> np.ndarray:
    """The cached ends (memory-mapped) if they match `documents` (`spot_check`: re-measures
    SPOT_CHECKS records); raises ValueError if not."""
    with open(meta) as f:
        info = json.load(f)
    if info.get('format') != INDEX_FORMAT or info.get('fingerprint') != documents.fingerprint:
        raise ValueError(f'built for {info.get("fingerprint")}, not {documents.fingerprint}')
    ends = np.load(npy, mmap_mode='r', allow_pickle=False)
    n = len(documents)
    if ends.dtype != np.int64 or ends.shape != (n,):
        raise ValueError(f'holds {ends.dtype}{list(ends.shape)}, expected int64[{n}]')
    if n and int(ends[-1]) != info.get('num_tokens'):
        raise ValueError(f'total {int(ends[-1])} tokens != {info.get("num_tokens")} recorded')
    ids = np.unique(np.linspace(0, n - 1, SPOT_CHECKS).astype(np.int64))
    if n and spot_check and not np.array_equal(_lengths_at(ends, ids),
                                _token_lengths(documents.read(ids), encoding)):
        raise ValueError(f'document lengths at records {ids.tolist()} differ from the data')
    return ends


def _atomic_write(path: str, write) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_index(documents, encoding=BYTES, spot_check=True) -> np.ndarray | None:
    """The cached ends of `documents` (memory-mapped) if present and valid, else None
    (a stale or corrupt one is logged)."""
    npy, meta = index_paths(documents, encoding)
    if os.path.exists(meta):
        try:
            return _open_index(documents, npy, meta, encoding, spot_check)
        except Exception as e:  # noqa: BLE001 (stale, truncated, unparsable: rebuild)
            logging.warning('data: rebuilding length index %s: %s', npy, e)
    return None


def save_index(documents, ends: np.ndarray, encoding=BYTES) -> None:
    """Caches `ends` atomically (a read-only data dir: logged, each process computes it)."""
    npy, meta = index_paths(documents, encoding)
    info = {
        'format': INDEX_FORMAT,
        'fingerprint': documents.fingerprint,
        'num_tokens': int(ends[-1]) if len(ends) else 0,
    }
    try:
        _atomic_write(npy, lambda f: np.save(f, ends, allow_pickle=False))
        _atomic_write(meta, lambda f: f.write(json.dumps(info, indent=1).encode()))
    except OSError as e:
        logging.warning('data: cannot cache length index %s (%s); each process computes it', npy, e)


def load_index(documents, encoding=BYTES) -> np.ndarray:
    """ends int64[num_records] of `documents` under `encoding` (bytes, or a tokenizer's ids):
    the cached index when it matches the data, else computed (one pass, which tokenizes
    every record once) and cached atomically; a folder's is always computed. (Training reads
    `token_cache.load_stream`, which builds this index and the token ids in one pass.)"""
    if documents.cache_dir is None:
        return compute_ends(documents, encoding=encoding)
    ends = cached_index(documents, encoding)
    if ends is None:
        ends = compute_ends(documents, encoding=encoding)
        save_index(documents, ends, encoding)
    return ends


# ------------------------------------------------------------------- Corpus


class Corpus:
    """One split as a virtual token stream, read on demand (see the module docstring).

    ends int64[num_records] (maybe memory-mapped); num_tokens: stream length; doc_ids
    int64[d]: record of each kept document; doc_starts/doc_lengths int64[d] (lengths incl.
    the eos). `read(starts, length)` -> uint8[n, length] windows; `documents(records)` ->
    {record: uint8[length]} (with eos); `stream()` -> the whole uint8[num_tokens] stream
    (a tokenizer's ids with its `encoding`: int32, or the cache's dtype).

    `tokens` [num_tokens] (the cached stream, `token_cache`; memory-mapped): reads slice it,
    nothing is tokenized. Without it, documents are read from `records` and encoded when
    needed, through an LRU cache of `cache_bytes`.
    """

    def __init__(self, records, ends: np.ndarray, cache_bytes: int = CACHE_BYTES,
                 encoding=BYTES, tokens: np.ndarray | None = None):
        self.records, self.cache_bytes, self.encoding = records, cache_bytes, encoding
        self.tokens = tokens
        if tokens is not None and len(tokens) != (int(ends[-1]) if len(ends) else 0):
            raise ValueError(f'data: {len(tokens)} cached tokens for a stream of {ends[-1]}')
        self.ends = np.asarray(ends)  # a plain view of a memmap: fast element access
        self.num_records = len(ends)
        self.num_tokens = int(ends[-1]) if len(ends) else 0
        self._cache, self._cached_bytes = collections.OrderedDict(), 0

    @functools.cached_property
    def doc_ids(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.ends, prepend=0))

    @functools.cached_property
    def doc_lengths(self) -> np.ndarray:
        return _lengths_at(self.ends, self.doc_ids)

    @functools.cached_property
    def doc_starts(self) -> np.ndarray:
        return self.ends[self.doc_ids] - self.doc_lengths

    def documents(self, records) -> dict[int, np.ndarray]:
        """{record: uint8[len]}: its document bytes and eos; fetches the uncached ones at once."""
        records = list(dict.fromkeys(int(r) for r in records))
        if self.tokens is not None:
            n = _lengths_at(self.ends, np.asarray(records, np.int64))
            return {r: np.asarray(self.tokens[e - k : e])
                    for r, e, k in zip(records, self.ends[records].tolist(), n.tolist())}
        missing = [r for r in records if r not in self._cache]
        out = {}
        for r in records:
            if r in self._cache:
                self._cache.move_to_end(r)
                out[r] = self._cache[r]
        if missing:
            want = _lengths_at(self.ends, np.asarray(missing, np.int64))
            for r, raw, n in zip(missing, self.records.read(missing), want, strict=True):
                doc = self.encoding(raw)
                if len(doc) != n or n < 2:
                    raise ValueError(
                        f'data: record {r} has {len(doc)} tokens but the length index says '
                        f'{n}; the dataset changed after its index was built — delete '
                        f'the jaxbig-index.* files of this split (they are rebuilt)'
                    )
                out[r] = self._cache[r] = doc
                self._cached_bytes += doc.nbytes
            while self._cached_bytes > self.cache_bytes and self._cache:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return out

    def stream(self) -> np.ndarray:
        """uint8[num_tokens]: the whole split (reads every document: for analysis, not training)."""
        return self.read([0], self.num_tokens)[0]

    def read(self, starts, length: int) -> np.ndarray:
        """uint8[n, length]: stream[s : s+length] for each s in `starts`."""
        starts = np.asarray(starts, np.int64).reshape(-1)
        if len(starts) and (starts.min() < 0 or starts.max() + length > self.num_tokens):
            raise ValueError(f'windows of {length} tokens exceed the stream ({self.num_tokens})')
        if self.tokens is not None:
            out = np.empty((len(starts), length), self.tokens.dtype)
            for row, s in enumerate(starts.tolist()):
                out[row] = self.tokens[s : s + length]
            return out
        first = np.searchsorted(self.ends, starts, side='right')
        last = np.searchsorted(self.ends, starts + length - 1, side='right')
        spans = [range(a, b + 1) for a, b in zip(first.tolist(), last.tolist(), strict=True)]
        records = [r for span in spans for r in span]
        lengths = dict(zip(records, _lengths_at(self.ends, np.asarray(records, np.int64)).tolist()))
        docs = self.documents(r for r in lengths if lengths[r])  # skipped records hold nothing
        out = np.empty((len(starts), length), self.encoding.dtype)
        for row, (start, span) in enumerate(zip(starts.tolist(), spans, strict=True)):
            pos = start
            for r in span:
                if lengths[r]:
                    offset = pos - (int(self.ends[r]) - lengths[r])
                    take = min(lengths[r] - offset, start + length - pos)
                    out[row, pos - start : pos - start + take] = docs[r][offset : offset + take]
                    pos += take
        return out
