"""Token ids computed once: a split's whole token stream cached as one flat array on disk.

    load_stream(documents, encoding)  -> (ends int64[num_records], tokens [num_tokens]):
                                      the length index (`documents.load_index`'s) and the
                                      stream, memory-mapped; whichever is missing or stale
                                      is rebuilt, both from one tokenizing pass

The stream is what `documents.Corpus` defines: every kept record's tokens followed by eos,
in record order; record r's tokens are tokens[ends[r] - length_r : ends[r]], so the length
index doubles as the documents' offsets. A training step only slices the memory-mapped
array (the pages of its rows: a host reads only what its rows need) and never tokenizes.

Files, next to the length index in the prepared dataset's directory:
`jaxbig-tokens.<split>.<text_key>[.<tokenizer hash>].<h>.npy`, dtype uint8 for bytes,
uint16 for a vocabulary of <= 65,536 ids, else int32 (a tokenizer's ids: 2 bytes per token,
about half the text for a BPE), + `.json` (format, the records' fingerprint, the encoding
name with the tokenizer's content hash, dtype, num_tokens). Keyed like the length index: a
retrained tokenizer file has another hash, hence its own cache. Written atomically (readers
see no half file); on open, the header, size and SPOT_CHECKS re-encoded records are
checked, and a mismatch rebuilds it. A folder's stream (no disk cache) is built in memory.

Old caches do not pile up: each use marks a cache as used (its `.json`'s mtime), and building
a new one removes the split's caches (and their length indexes) beyond the KEEP_CACHES most
recently used — one per tokenizer, so retraining a tokenizer many times keeps the newest
few; a removed cache is rebuilt if asked for again. Each removal is logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile

import numpy as np

from jaxbig.data.text import documents as docs_lib

TOKENS_FORMAT = 1
KEEP_CACHES = 4  # per split and text key: the most recently used tokenizers' caches
HEADER_BYTES = 128  # .npy v1.0 header of a 1-D array of < 10**20 elements, padded to 64


def token_dtype(encoding) -> np.dtype:
    """uint8 (bytes), uint16 (ids < 65,536) or int32: the cache's little-endian dtype."""
    if encoding.dtype == np.uint8:
        return np.dtype('u1')
    tok = encoding.tokenizer
    top = max(int(tok.vocab_size), int(encoding.eos_id) + 1)
    return np.dtype('<u2') if top <= 1 << 16 else np.dtype('<i4')


def cache_paths(documents, encoding) -> tuple[str, str]:
    """(.npy, .json) of the token cache of `documents` (a TFDS split) under `encoding`."""
    def swap(path):
        name = os.path.basename(path).replace('jaxbig-index.', 'jaxbig-tokens.', 1)
        return os.path.join(os.path.dirname(path), name)

    return tuple(swap(p) for p in docs_lib.index_paths(documents, encoding))


class NpyWriter:
    """Appends 1-D chunks to a new `.npy` (a temporary file in the same folder; `commit()`
    writes the header and renames it to `path`, `abort()` removes it). Memory: one chunk."""

    def __init__(self, path: str, dtype: np.dtype):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        fd, self.tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
        self.file = os.fdopen(fd, 'wb')
        self.file.write(b'\0' * HEADER_BYTES)

    def __call__(self, chunks: list[np.ndarray]) -> None:
        for a in chunks:
            if len(a):
                self.file.write(np.ascontiguousarray(a, self.dtype).tobytes())
                self.count += len(a)

    def commit(self) -> None:
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(self.file, {
            'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False,
            'shape': (self.count,)})
        if self.file.tell() != HEADER_BYTES:
            raise OSError(f'.npy header of {self.file.tell()} bytes, expected {HEADER_BYTES}')
        self.file.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class MemorySink:
    """Collects the stream in memory (folders): `array()` -> [count] of `dtype`."""

    def __init__(self, dtype: np.dtype):
        self.dtype, self.chunks = np.dtype(dtype), []

    def __call__(self, chunks: list[np.ndarray]) -> None:
        self.chunks.extend(np.asarray(a, self.dtype) for a in chunks if len(a))

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, self.dtype)


def spot_records(ends: np.ndarray) -> np.ndarray:
    """int64[<= SPOT_CHECKS]: the records re-encoded when a cache is opened."""
    return np.unique(np.linspace(0, len(ends) - 1, docs_lib.SPOT_CHECKS).astype(np.int64))


def _open_tokens(documents, encoding, ends: np.ndarray, spots: dict) -> np.ndarray:
    """The cached stream (memory-mapped) if it matches; raises ValueError if not.
    `spots`: {record: its tokens, encoded now} for the spot checks."""
    npy, meta = cache_paths(documents, encoding)
    with open(meta) as f:
        info = json.load(f)
    want = {'format': TOKENS_FORMAT, 'fingerprint': documents.fingerprint,
            'encoding': encoding.name}
    got = {k: info.get(k) for k in want}
    if got != want:
        raise ValueError(f'built for {got}, not {want}')
    tokens = np.load(npy, mmap_mode='r', allow_pickle=False)
    n, dtype = int(ends[-1]) if len(ends) else 0, token_dtype(encoding)
    if tokens.dtype != dtype or tokens.shape != (n,):
        raise ValueError(f'holds {tokens.dtype}{list(tokens.shape)}, expected {dtype}[{n}]')
    for r, want_ids in spots.items():
        if not np.array_equal(tokens[int(ends[r]) - len(want_ids) : int(ends[r])], want_ids):
            raise ValueError(f'the tokens of record {r} differ from the data')
    return tokens


def _cached(documents, encoding) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ends or None, tokens or None): the valid caches; stale ones are logged. The spot
    checks encode SPOT_CHECKS records once, for both."""
    ends = docs_lib.cached_index(documents, encoding, spot_check=False)
    if ends is None or not len(ends):
        return ends, None
    ids = spot_records(ends)
    encoded = encoding.encode_many(documents.read(ids))
    if not np.array_equal(docs_lib._lengths_at(ends, ids), [len(a) for a in encoded]):
        npy, _ = docs_lib.index_paths(documents, encoding)
        logging.warning('data: rebuilding length index %s: document lengths at records %s '
                        'differ from the data', npy, ids.tolist())
        return None, None
    npy, meta = cache_paths(documents, encoding)
    if not os.path.exists(meta):
        return ends, None
    try:
        tokens = _open_tokens(documents, encoding, ends, dict(zip(ids.tolist(), encoded)))
        _mark_used(meta)
        return ends, tokens
    except Exception as e:  # noqa: BLE001 (stale, truncated, unparsable: rebuild)
        logging.warning('data: rebuilding token cache %s: %s', npy, e)
        return ends, None


def _build(documents, encoding, old_ends) -> tuple[np.ndarray, np.ndarray]:
    """One tokenizing pass: writes the stream (and the index unless `old_ends` is valid and
    unchanged); returns them."""
    npy, meta = cache_paths(documents, encoding)
    dtype = token_dtype(encoding)
    made = _missing_folders(os.path.dirname(npy))
    try:
        os.makedirs(os.path.dirname(npy), exist_ok=True)
        writer = NpyWriter(npy, dtype)
    except OSError as e:  # a read-only data dir: every process builds it in memory
        logging.warning('data: cannot cache token ids %s (%s); building them in memory', npy, e)
        sink = MemorySink(dtype)
        ends = docs_lib.compute_ends(documents, encoding=encoding, sink=sink)
        return ends, sink.array()
    try:
        ends = docs_lib.compute_ends(documents, encoding=encoding, sink=writer)
        writer.commit()
    except BaseException:  # bad data (a missing key ...): leave the data dir as it was
        writer.abort()
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:  # another process wrote there meanwhile
                break
        raise
    if old_ends is None or not np.array_equal(old_ends, ends):
        docs_lib.save_index(documents, ends, encoding)
    info = {'format': TOKENS_FORMAT, 'fingerprint': documents.fingerprint,
            'encoding': encoding.name, 'dtype': dtype.str, 'num_tokens': writer.count}
    docs_lib._atomic_write(meta, lambda f: f.write(json.dumps(info, indent=1).encode()))
    if hasattr(documents, 'cached'):  # a files source keeps its record index beside it
        documents.cached()
    remove_unused(documents)
    return ends, np.load(npy, mmap_mode='r', allow_pickle=False)


def _missing_folders(folder: str) -> list[str]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        folder = parent if parent != folder else ''
    return missing


def _mark_used(meta: str) -> None:
    try:
        os.utime(meta)
    except OSError:  # a read-only data dir: nothing is removed there either
        pass


def remove_unused(documents, keep: int | None = None) -> list[str]:
    """Removes the token caches of `documents`' split and text key beyond the `keep`
    (default KEEP_CACHES) most recently used, with their length indexes; returns the removed
    `.npy` paths. Files another process still has memory-mapped stay readable to it."""
    keep = KEEP_CACHES if keep is None else keep
    folder, fp = documents.cache_dir, documents.fingerprint
    found = []
    for name in os.listdir(folder):
        if not (name.startswith('jaxbig-tokens.') and name.endswith('.json')):
            continue
        meta = os.path.join(folder, name)
        try:
            with open(meta) as f:
                info_fp = json.load(f).get('fingerprint') or {}
            used = os.path.getmtime(meta)
        except (OSError, ValueError):
            continue
        if (info_fp.get('split'), info_fp.get('text_key')) == (fp['split'], fp['text_key']):
            found.append((used, meta))
    removed = []
    for _, meta in sorted(found, reverse=True)[keep:]:
        npy = meta[:-len('.json')] + '.npy'
        index = os.path.join(folder, os.path.basename(npy).replace('jaxbig-tokens.',
                                                                   'jaxbig-index.', 1))
        for path in (meta, npy, index, index[:-len('.npy')] + '.json'):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        logging.info('data: removed the unused token cache %s (%d newer kept)', npy, keep)
        removed.append(npy)
    return removed


def load_stream(documents, encoding=docs_lib.BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(ends int64[num_records], tokens [num_tokens]) of `documents` under `encoding`: the
    cached pair when both match the data, else rebuilt together by one pass over the records
    (which tokenizes each once). A folder's (no cache_dir) are built in memory."""
    if documents.cache_dir is None:
        sink = MemorySink(token_dtype(encoding))
        ends = docs_lib.compute_ends(documents, encoding=encoding, sink=sink)
        return ends, sink.array()
    ends, tokens = _cached(documents, encoding)
    if tokens is not None:
        return ends, tokens
    return _build(documents, encoding, ends)


@functools.lru_cache(maxsize=8)
def load_corpus(
    name: str, split: str, data_dir: str, path: str = '', text_key: str = 'text',
    tokenizer: str = 'bytes', eos_id: int = -1, splits: str = '',
) -> docs_lib.Corpus:
    """The Corpus of a split: its length index and token ids (`load_stream`: memory-mapped,
    computed once), no document text (cached in-process). `tokenizer`:
    'bytes', a tokenizer.json or a SentencePiece .model path (`eos_id` its end-of-sequence
    id)."""
    encoding = docs_lib.encoding_for(tokenizer, eos_id)
    if name in ('files', 'hf_disk'):  # JSONL / Parquet, or a saved Hugging Face dataset
        if name == 'files':  # jaxbig.data.text.file_documents
            from jaxbig.data.text.file_documents import FileDocuments as Records
        else:  # jaxbig.data.text.hf_disk
            from jaxbig.data.text.hf_disk import HFDiskDocuments as Records
        records = Records(path, split, text_key, splits, data_dir)
        ends, tokens = load_stream(records, encoding)
        return docs_lib.Corpus(records, ends, encoding=encoding, tokens=tokens)
    if name == 'folder':
        records = docs_lib.FolderDocuments(path, split)
        ends, tokens = load_stream(records, encoding)
        corpus = docs_lib.Corpus(records, ends, encoding=encoding, tokens=tokens)
        if not corpus.num_tokens:
            raise ValueError(f'data.path: no UTF-8 text files for split {split!r} under {path!r}')
        return corpus
    if name in docs_lib.EMBEDDED:
        builder = docs_lib.EMBEDDED[name](data_dir=data_dir)
        if not builder.is_prepared():
            raise ValueError(
                f'data.name={name!r}: not prepared in data_dir '
                f'{data_dir!r}; call jaxbig.data.prepare(config) first'
            )
    else:
        builder = docs_lib._tfds_builder(name, data_dir)
    records = docs_lib.TfdsDocuments(builder, split, text_key)
    ends, tokens = load_stream(records, encoding)
    return docs_lib.Corpus(records, ends, encoding=encoding, tokens=tokens)
