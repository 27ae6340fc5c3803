"""Documents of a text split, read on demand: records, the length index, the Corpus.

A split is a list of records (TFDS examples or folder files). Document bytes are the
record's text UTF-8 encoded with NUL bytes removed; a document is followed by eos
(NUL, `ByteTokenizer.eos_id`) and empty documents are skipped. The split's token stream is the concatenation of
its documents, each with its eos — never materialised: a per-split *length index*
`ends` int64[num_records] (cumulative document lengths incl. eos, 0 for a skipped record)
locates any byte, and only the documents a reader needs are read, through the
random-access TFDS data source (or the folder's files), with an LRU cache of decoded
documents (`CACHE_BYTES` per split and process).

    TfdsDocuments(builder, split, text_key)  records of a TFDS split: read(ids) -> list[bytes]
    FolderDocuments(root, split)             the same for the files of a folder's split
    load_index(documents)                    ends int64[num_records], cached on disk (TFDS)
    Corpus(records, ends)                    the virtual stream: doc_ids / doc_starts /
                                             doc_lengths int64[d], read(starts, length) ->
                                             uint8[n, length], documents(records)
    load_corpus(name, split, data_dir, ...)  the Corpus of a split (cached in-process)

The index of a TFDS split is computed once (by `jaxbig.data.lm.prepare`, i.e. process 0
before training, or by the first pipeline that needs it) and cached next to the prepared
data as `<dataset dir>/jaxbig-index.<split>.<text_key>.<hash>.npy` (+ `.json`, its
fingerprint), written atomically and memory-mapped when read; a missing, stale or corrupt
index is rebuilt. A folder's index is computed in memory (one read of every file of the
split).
"""

import collections
import functools
import hashlib
import json
import logging
import os
import re
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from jaxbig.data import pystdlib

EMBEDDED = {'pystdlib': pystdlib.Pystdlib}
INDEX_FORMAT = 1
CACHE_BYTES = 64 << 20  # decoded documents kept per split and process (LRU)
SPOT_CHECKS = 8  # records re-measured when a cached index is opened


def resolve_data_dir(data_dir: str) -> str:
    """'' -> TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets); expands '~'."""
    default = tfds.core.constants.get_default_data_dir() or '~/tensorflow_datasets'  # TFDS_DATA_DIR=''
    return os.path.abspath(os.path.expanduser(data_dir or default))


def _not_prepared(name: str, data_dir: str) -> ValueError:
    return ValueError(
        f'data.name={name!r}: TFDS dataset not prepared in data_dir {data_dir!r}; '
        f'prepare it on a machine with internet: `tfds build {name} --data_dir '
        f'{data_dir} --file_format=array_record` (then copy that directory here).'
    )


def _tfds_builder(name: str, data_dir: str):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # unknown name, missing files, catalog import errors...
        raise _not_prepared(name, data_dir) from e
    if not prepared:
        raise _not_prepared(name, data_dir)
    return builder


# ------------------------------------------------------------------- Records


class TfdsDocuments:
    """Random access to the raw text of one TFDS split: read(ids) -> list[bytes]."""

    def __init__(self, builder, split: str, text_key: str):
        try:
            self.source = builder.as_data_source(split=split)
        except Exception as e:
            raise ValueError(
                f'data split {split!r} not available for {builder.name!r} '
                f'(splits: {sorted(builder.info.splits)})'
            ) from e
        self.text_key = text_key
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


class ByteEncoding:
    """A record's stream tokens: its UTF-8 bytes without NUL, then eos (NUL); uint8."""

    name, dtype, eos_id = 'bytes', np.uint8, 0

    def __call__(self, raw: bytes) -> np.ndarray:
        return np.frombuffer(raw.replace(b'\0', b'') + b'\0', np.uint8)

    def lengths(self, docs: list[bytes]) -> np.ndarray:
        n = np.array([len(d) - d.count(0) for d in docs], np.int64)
        return np.where(n > 0, n + 1, 0)


class TokenizerEncoding:
    """A record's stream tokens from a tokenizer (`jaxbig.data.tokenizers.FileTokenizer`):
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
        return np.array([len(self(d)) for d in docs], np.int64)


BYTES = ByteEncoding()


def _token_lengths(docs: list[bytes], encoding=BYTES) -> np.ndarray:
    """int64[n]: stream length of each record (its tokens plus eos); 0 if empty."""
    return encoding.lengths(docs)


def compute_ends(documents, chunk: int = 1024, encoding=BYTES) -> np.ndarray:
    """ends int64[num_records]: cumulative stream lengths (one pass over every record)."""
    lengths = np.zeros(len(documents), np.int64)
    for start in range(0, len(documents), chunk):
        stop = min(len(documents), start + chunk)
        lengths[start:stop] = _token_lengths(documents.read(range(start, stop)), encoding)
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


def _open_index(documents, npy: str, meta: str, encoding=BYTES) -> np.ndarray:
    """The cached ends (memory-mapped) if they match `documents`; raises ValueError if not."""
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
    if n and not np.array_equal(_lengths_at(ends, ids),
                                _token_lengths(documents.read(ids), encoding)):
        raise ValueError(f'document lengths at records {ids.tolist()} differ from the data')
    return ends


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_index(documents, encoding=BYTES) -> np.ndarray:
    """ends int64[num_records] of `documents` under `encoding` (bytes, or a tokenizer's ids):
    the cached index when it matches the data, else computed (one pass, which tokenizes
    every record once) and cached atomically; a folder's is always computed."""
    if documents.cache_dir is None:
        return compute_ends(documents, encoding=encoding)
    npy, meta = index_paths(documents, encoding)
    if os.path.exists(meta):
        try:
            return _open_index(documents, npy, meta, encoding)
        except Exception as e:  # noqa: BLE001 (stale, truncated, unparsable: rebuild)
            logging.warning('data: rebuilding length index %s: %s', npy, e)
    ends = compute_ends(documents, encoding=encoding)
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
    return ends


# ------------------------------------------------------------------- Corpus


class Corpus:
    """One split as a virtual token stream, read on demand (see the module docstring).

    ends int64[num_records] (maybe memory-mapped); num_tokens: stream length; doc_ids
    int64[d]: record of each kept document; doc_starts/doc_lengths int64[d] (lengths incl.
    the eos). `read(starts, length)` -> uint8[n, length] windows; `documents(records)` ->
    {record: uint8[length]} (with eos), through an LRU cache of `cache_bytes`; `stream()`
    -> the whole uint8[num_tokens] stream (int32 ids with a tokenizer's `encoding`).
    """

    def __init__(self, records, ends: np.ndarray, cache_bytes: int = CACHE_BYTES,
                 encoding=BYTES):
        self.records, self.cache_bytes, self.encoding = records, cache_bytes, encoding
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


@functools.lru_cache(maxsize=8)
def load_corpus(
    name: str, split: str, data_dir: str, path: str = '', text_key: str = 'text',
    tokenizer: str = 'bytes', eos_id: int = -1,
) -> Corpus:
    """The Corpus of a split: its length index, no document text (cached in-process).
    `tokenizer`: 'bytes' or a tokenizer.json path (`eos_id` its end-of-sequence id)."""
    encoding = encoding_for(tokenizer, eos_id)
    if name == 'folder':
        records = FolderDocuments(path, split)
        corpus = Corpus(records, load_index(records, encoding), encoding=encoding)
        if not corpus.num_tokens:
            raise ValueError(f'data.path: no UTF-8 text files for split {split!r} under {path!r}')
        return corpus
    if name in EMBEDDED:
        builder = EMBEDDED[name](data_dir=data_dir)
        if not builder.is_prepared():
            raise ValueError(
                f'data.name={name!r}: not prepared in data_dir '
                f'{data_dir!r}; call jaxbig.data.prepare(config) first'
            )
    else:
        builder = _tfds_builder(name, data_dir)
    records = TfdsDocuments(builder, split, text_key)
    return Corpus(records, load_index(records, encoding), encoding=encoding)


def encoding_for(tokenizer: str = 'bytes', eos_id: int = -1):
    """The stream encoding of a data section's `tokenizer` / `eos_id` (see data.tokenizers)."""
    if tokenizer in ('bytes', 'byte'):
        return BYTES
    from jaxbig.data import tokenizers

    return TokenizerEncoding(tokenizers.from_config({'tokenizer': tokenizer, 'eos_id': eos_id}))
