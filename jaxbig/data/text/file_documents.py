"""Text corpora as researchers keep them: JSONL (plain, .gz, .zst) and Parquet shards.

`data.name='files'` with `data.path` = a file, a directory (every supported file under it,
recursively, sorted) or a glob; the format is read from each file's suffix:

    .jsonl / .json (one object per line), .jsonl.gz, .jsonl.zst   text = object[text_key]
    .parquet                                                      text = column text_key

`data.splits` says which records form each split, as 'name=value' pairs:

    'validation=0.01'   (the default) a fixed pseudo-random 1 % of all records (exactly
                        round(0.01 n), chosen by a seed-0 permutation of the record ids) is
                        'validation'; 'train' is the rest
    'train=train-*.parquet,validation=val/*.jsonl'   splits by file: globs matched against
                        the paths relative to data.path (a directory) or its directory

Records are numbered in file order (rows within a file in order). `FileDocuments(...)` is the
records of one split with the interface of the other sources (jaxbig.data.text.documents):
len, read(ids) -> list[bytes], a fingerprint (each file's relative path, size and mtime,
the text key and the split spec) and a cache directory under the TFDS data_dir
(`<data_dir>/jaxbig-files/<hash of the fingerprint>/`), where the length index and the
token ids are cached once per tokenizer as for TFDS splits (jaxbig.data.text.token_cache):
training slices that memory-mapped stream and never re-reads the files. Reading is by
pyarrow (Parquet: row groups, an LRU of them) and zstandard / gzip streams; a plain JSONL
file keeps its line offsets in memory for random access; a compressed one is streamed
forward from where the previous read stopped, keeping only the rows asked for (the one
tokenizing pass, and the spot checks when a cache is reopened, decompress each file once;
a read before the stream's position reopens it). Errors name the file and its own line
number ('a.jsonl:3: ...', blank lines counted) or a Parquet file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob
import gzip
import hashlib
import io
import itertools
import json
import logging
import os

import numpy as np

from jaxbig.data.builders import pystdlib
from jaxbig.data.text import record_index

SUFFIXES = ('.jsonl', '.json', '.jsonl.gz', '.jsonl.zst', '.parquet')
DEFAULT_SPLITS = 'validation=0.01'


def find_files(path: str) -> tuple[str, list[str]]:
    """(root, sorted relative paths) of the supported files `path` names: a file, a
    directory (recursively) or a glob. ValueError (one line) when there are none."""
    path = os.path.expanduser(path)
    if not path:
        raise ValueError("data.path: empty; data.name='files' reads JSONL / Parquet files "
                         'from a file, a directory or a glob')
    if os.path.isdir(path):
        root, rel = path, pystdlib.walk_files(path, skip_hidden=True)
    else:
        root = os.path.dirname(path) if os.path.isfile(path) else _glob_root(path)
        found = [path] if os.path.isfile(path) else glob.glob(path, recursive=True)
        rel = [os.path.relpath(f, root) for f in found
               if not os.path.basename(f).startswith('.')]
    files = sorted(r for r in rel
                   if r.endswith(SUFFIXES) and os.path.isfile(os.path.join(root, r)))
    if not files:
        raise ValueError(f'data.path={path!r}: no {", ".join(SUFFIXES)} files')
    return root, files


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ('.' if none)."""
    parts = pattern.split(os.sep)
    fixed = itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1])
    return os.sep.join(fixed) or '.'


def parse_splits(spec: str) -> dict:
    """'validation=0.01' -> {'validation': 0.01}; 'train=a*.jsonl,validation=b.jsonl' ->
    {'train': 'a*.jsonl', 'validation': 'b.jsonl'}. One held-out fraction, or globs."""
    out = {}
    for part in filter(None, (p.strip() for p in (spec or DEFAULT_SPLITS).split(','))):
        name, sep, value = part.partition('=')
        if not sep or not name or not value:
            raise ValueError(f'data.splits={spec!r}: expected name=fraction or name=glob pairs')
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    fractions = [v for v in out.values() if isinstance(v, float)]
    if fractions and (len(out) != 1 or not 0 < fractions[0] < 1):
        raise ValueError(f'data.splits={spec!r}: a held-out fraction in (0, 1) is one entry '
                         "(e.g. 'validation=0.01'; the rest is 'train')")
    return out


def split_names(splits: str) -> list[str]:
    """The splits a `data.splits` spec defines: 'train' and the held-out one, or its globs'."""
    spec = parse_splits(splits)
    return ['train', *spec] if isinstance(next(iter(spec.values())), float) else list(spec)


def split_ids(rel: list[str], counts, split: str, splits: str, root: str) -> np.ndarray:
    """int64 record ids (numbered over the files `rel` in order, `counts` records each) of
    `split` under the `data.splits` spec `splits` (module docstring); one-line ValueError
    for a split the spec does not define or a glob that matches no file."""
    spec = parse_splits(splits)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    held = next(iter(spec.items()))
    if isinstance(held[1], float):  # one held-out fraction; 'train' is the rest
        n = int(starts[-1])
        chosen = np.zeros(n, bool)
        chosen[np.random.default_rng(0).permutation(n)[:round(held[1] * n)]] = True
        if split not in (held[0], 'train'):
            raise ValueError(f"data split {split!r}: data.splits={splits or DEFAULT_SPLITS!r}"
                             f" defines {held[0]!r} and 'train'")
        return np.flatnonzero(chosen if split == held[0] else ~chosen).astype(np.int64)
    if split not in spec:
        raise ValueError(f'data split {split!r}: data.splits={splits!r} defines {sorted(spec)}')
    pattern = spec[split]
    mine = [i for i, r in enumerate(rel) if fnmatch.fnmatch(r, pattern)]
    if not mine:
        raise ValueError(f'data.splits: {split}={pattern!r} matches none of the '
                         f'{len(rel)} files under {root!r}')
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in mine]).astype(np.int64)


def _open_text(path: str):
    if path.endswith('.gz'):
        return gzip.open(path, 'rt', encoding='utf-8')
    if path.endswith('.zst'):
        return io.TextIOWrapper(io.BufferedReader(_ZstdFrames(path)), encoding='utf-8')
    return open(path, encoding='utf-8')


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame; a file that ends inside a
    frame (truncated) raises zstandard.ZstdError — zstandard's stream_reader returns what it
    has, or nothing, without saying so."""

    def __init__(self, path: str):
        import zstandard

        self._zstd, self._file = zstandard, open(path, 'rb')
        self._d, self._fed, self._done = self._new(), False, False
        self._out, self._pos = b'', 0  # decompressed bytes not yet read: self._out[self._pos:]

    def _new(self):
        return self._zstd.ZstdDecompressor().decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._out) and not self._done:
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._fed and not self._d.eof:  # fed, and its frame never ended
                    raise self._zstd.ZstdError('the stream ends inside a frame')
                self._done = True
                break
            if self._d.eof:  # the last frame ended exactly at the previous chunk's end
                self._d = self._new()
            out, self._fed = self._d.decompress(chunk), True
            while self._d.eof and self._d.unused_data:  # the next frame
                rest, self._d = self._d.unused_data, self._new()
                out += self._d.decompress(rest)
            self._out, self._pos = out, 0
        # an offset into the decompressed chunk: each read copies only what it returns
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = memoryview(self._out)[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self):
        self._file.close()
        super().close()


def _text_of(value, where: str, key: str) -> bytes:
    if not isinstance(value, dict) or key not in value:
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f'{where}: no data.text_key={key!r} (found {found})')
    text = value[key]
    return (text if isinstance(text, str) else str(text)).encode('utf-8')


def _line_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset, line number) int64 [records] of a plain JSONL file's non-blank lines."""
    offsets, numbers, pos = [], [], 0
    with open(path, 'rb') as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                offsets.append(pos)
                numbers.append(number)
            pos += len(line)
    return np.asarray(offsets, np.int64), np.asarray(numbers, np.int64)


class _File:
    """One file's records: count, and texts(rows) -> list[bytes]."""

    def __init__(self, path: str, text_key: str, known: dict | None = None):
        """known: this file's entry of a saved record index ({'count', and for a plain
        JSONL 'offsets', 'numbers'}), which spares the pass that counts its records."""
        self.path, self.key, self.offsets = path, text_key, None
        if path.endswith('.parquet'):
            import pyarrow.parquet as pq

            self._pq = pq.ParquetFile(path)
            if text_key not in self._pq.schema_arrow.names:
                raise ValueError(f'{path}: no data.text_key={text_key!r} column (found '
                                 f'{self._pq.schema_arrow.names})')
            sizes = [self._pq.metadata.row_group(i).num_rows
                     for i in range(self._pq.num_row_groups)]
            self.group_starts = np.cumsum([0, *sizes])
            self.count = int(self.group_starts[-1])
        else:
            self._pq, self.offsets, self.count = None, None, 0
            if known is not None and ('offsets' in known) == path.endswith(('.jsonl', '.json')):
                self.count = int(known['count'])
                self.offsets, self._numbers = known.get('offsets'), known.get('numbers')
                self._cursor = None
            elif path.endswith(('.jsonl', '.json')):  # line offsets: random access by seek
                self.offsets, self._numbers = _line_offsets(path)
                self.count = len(self.offsets)
            else:
                with _open_text(path) as f:
                    self.count = sum(1 for line in f if line.strip())
                self._cursor = None  # [open stream, next record, next line number]

    @functools.lru_cache(maxsize=4)
    def _group(self, g: int) -> list:
        return self._pq.read_row_group(g, columns=[self.key]).column(0).to_pylist()

    def _stream(self, rows) -> dict[int, tuple[int, str]]:
        """{row: (line number, line)} of a compressed file's `rows`, read forward from where
        the previous call stopped (a row before that reopens the file): the tokenizing pass
        (rows in order, chunk after chunk) and the spot checks decompress the file once
        each, and memory holds only the rows asked for."""
        want = sorted(set(rows))
        if self._cursor is None or want[0] < self._cursor[1]:
            if self._cursor is not None:
                self._cursor[0].close()
            self._cursor = [_open_text(self.path), 0, 0]
        f, record, number = self._cursor
        out, todo = {}, iter(want)
        target = next(todo)
        for line in f:
            number += 1
            if not line.strip():
                continue
            if record == target:
                out[record] = (number, line)
                target = next(todo, None)
            record += 1
            if target is None:
                break
        self._cursor[1:] = [record, number]
        return out

    def texts(self, rows) -> list[bytes]:
        with unreadable_as_value_error(self.path):
            return self._texts(rows)

    def _texts(self, rows) -> list[bytes]:
        if self._pq is not None:
            out = []
            for r in rows:
                g = int(np.searchsorted(self.group_starts, r, side='right')) - 1
                value = self._group(g)[r - self.group_starts[g]]
                out.append(b'' if value is None else str(value).encode('utf-8'))
            return out
        if self.offsets is not None:
            out = []
            with open(self.path, 'rb') as f:
                for r in rows:
                    f.seek(int(self.offsets[r]))
                    where = f'{self.path}:{self._numbers[r]}'
                    out.append(_text_of(_loads(f.readline(), where), where, self.key))
            return out
        lines = self._stream(rows)
        return [_text_of(_loads(lines[r][1], f'{self.path}:{lines[r][0]}'),
                         f'{self.path}:{lines[r][0]}', self.key) for r in rows]


def _loads(line, where: str):
    """One JSON record; `where` = 'path:line' for the one-line error."""
    try:
        return json.loads(line)
    except UnicodeDecodeError as e:  # a plain file's line, read as bytes
        raise ValueError(f'{where}: not UTF-8 text ({e.reason} at byte {e.start} of the '
                         'line)') from None
    except ValueError as e:
        raise ValueError(f'{where}: not JSON ({e})') from None


@functools.lru_cache(maxsize=16)
def _files(root: str, rel: tuple, text_key: str, stamp: tuple, index: str) -> tuple:
    """The opened files (record counts known), cached per content stamp; the counts (and a
    plain JSONL's line offsets) come from the record index `index` when it was saved for
    these files. A file that cannot be read (truncated, not UTF-8, not Parquet) is a
    one-line ValueError naming it, a file without records is skipped with a warning."""
    known = record_index.load(index, rel)
    files = []
    for r in rel:
        path = os.path.join(root, r)
        with unreadable_as_value_error(path):
            files.append(_File(path, text_key, known.get(r)))
        if not files[-1].count:
            logging.warning('data: %s has no records; skipped', path)
    return tuple(files)


@contextlib.contextmanager
def unreadable_as_value_error(path: str):
    """Turns a reader's failure on a damaged file (truncated gzip / zstd stream or Parquet
    file, bytes that are not UTF-8) into one line naming the file."""
    import pyarrow

    try:
        yield
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    except (EOFError, OSError, pyarrow.ArrowException, _zstd_error()) as e:  # before ValueError:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__  # ArrowInvalid is one
        raise ValueError(f'{path}: cannot be read ({detail}); is it truncated?') from None


def _zstd_error():
    import zstandard

    return zstandard.ZstdError


class FileDocuments:
    """The records of one split of a 'files' source (see the module docstring)."""

    def __init__(self, path: str, split: str, text_key: str, splits: str, data_dir: str):
        root, rel = find_files(path)
        parse_splits(splits)  # a malformed spec fails before any file is opened
        stamp = tuple((r, os.path.getsize(os.path.join(root, r)),
                       os.stat(os.path.join(root, r)).st_mtime_ns) for r in rel)
        self.fingerprint = {'files': [list(s) for s in stamp], 'root': os.path.abspath(root),
                            'split': split, 'text_key': text_key,
                            'splits': splits or DEFAULT_SPLITS}
        key = json.dumps(dict(self.fingerprint, split=None), sort_keys=True).encode()
        # created by the first cache written (token_cache), so a refusal leaves nothing
        self.cache_dir = os.path.join(data_dir, 'jaxbig-files', hashlib.sha1(key).hexdigest()[:16])
        self._rel = tuple(rel)
        self._index = os.path.join(self.cache_dir, record_index.RECORDS_FILE)
        self._files = _files(root, self._rel, text_key, stamp, self._index)
        counts = np.array([f.count for f in self._files], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        ids = split_ids(rel, counts, split, splits, root)
        self.ids, self._starts = ids.astype(np.int64), starts

    def cached(self) -> None:
        """Called by the token cache once it has written its files here: saves the record
        index (counts, plain JSONL line offsets), so the next run skips counting."""
        if not os.path.exists(self._index):
            record_index.save(self._index, self._rel, self._files)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, ids) -> list[bytes]:
        records = self.ids[np.asarray(list(ids), np.int64)]
        files = np.searchsorted(self._starts, records, side='right') - 1
        out: list = [b''] * len(records)
        for f in np.unique(files):
            where = np.flatnonzero(files == f)
            rows = (records[where] - self._starts[f]).tolist()
            for j, text in zip(where, self._files[f].texts(rows)):
                out[j] = text.replace(b'\x00', b'')
        return out
