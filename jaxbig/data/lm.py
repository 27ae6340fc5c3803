"""Language-modelling data: documents -> byte stream -> index-based batches.

A split's documents are read once, UTF-8 encoded, each terminated by `eos_id` and
concatenated into one in-memory uint8 stream (cached per dataset/split/data_dir).
Empty documents are skipped; NUL bytes inside a document are removed.

* `pack=True`: sequence k is `stream[k*(T+1) : (k+1)*(T+1)]` (the tail is dropped);
  mask is all ones.
* `pack=False`: sequence k is document k (with its eos) truncated to T+1 tokens and
  right-padded with eos; mask is 0 where the target is padding.

inputs = seq[:-1], targets = seq[1:]. Global batch i holds the sequences at global
positions i*B .. i*B+B-1 of an endless stream of epochs; epoch e visits all
`num_sequences` sequences in the order of `grain.MapDataset.range(n).shuffle(s_e)`,
s_e derived from (seed, e). So a batch is a pure function of (seed, i): resuming at
step k replays exactly what an uninterrupted run would have seen.
"""

import dataclasses
import functools
import numbers
import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxbig.data import pystdlib
from jaxbig.data.tokenizers import ByteTokenizer

EMBEDDED = {'pystdlib': pystdlib.Pystdlib}


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


def prepare(config) -> None:
    """Idempotent. Builds embedded TFDS datasets into `config.data_dir` if needed;
    checks that a folder exists or that any other TFDS dataset is prepared."""
    name, data_dir = config.name, resolve_data_dir(config.get('data_dir', ''))
    if name == 'folder':
        _folder_root(config)
    elif name in EMBEDDED:
        builder = EMBEDDED[name](data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare(
                file_format='array_record',
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    else:
        _tfds_builder(name, data_dir)


def _tfds_builder(name: str, data_dir: str):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # unknown name, missing files, catalog import errors...
        raise _not_prepared(name, data_dir) from e
    if not prepared:
        raise _not_prepared(name, data_dir)
    return builder


def _folder_root(config) -> str:
    path = config.get('path', '')
    root = os.path.expanduser(path) if path else ''
    if not root or not os.path.isdir(root):
        raise ValueError(f'data.path: folder {path!r} does not exist (data.name=folder)')
    return root


def _folder_documents(root: str, split: str) -> list[bytes]:
    """UTF-8 files under root (hidden entries skipped) whose hashed split is `split`."""
    if split not in ('train', 'validation'):
        raise ValueError(
            f"data split {split!r}: folder datasets only have 'train' and 'validation'"
        )
    docs, any_text = [], False
    for rel in pystdlib.walk_files(root, skip_hidden=True):
        text = pystdlib.read_text(os.path.join(root, rel))
        any_text |= text is not None
        if text is not None and pystdlib.split_for_path(rel) == split:
            docs.append(text.encode('utf-8'))
    if not any_text:
        raise ValueError(f'data.path: no UTF-8 text files under {root!r}')
    return docs


def _tfds_documents(source, text_key: str) -> list[bytes]:
    docs, n, chunk = [], len(source), 1024
    for start in range(0, n, chunk):
        idx = range(start, min(n, start + chunk))
        items = (
            source.__getitems__(idx)
            if hasattr(source, '__getitems__')
            else [source[i] for i in idx]
        )
        for item in items:
            if text_key not in item:
                raise ValueError(
                    f'data.text_key={text_key!r} not in dataset features {sorted(item)}'
                )
            text = item[text_key]
            docs.append(text.encode('utf-8') if isinstance(text, str) else bytes(text))
    return docs


@dataclasses.dataclass(frozen=True)
class Corpus:
    """One split as a token stream: tokens uint8[n]; doc_starts/doc_lengths int64[d]
    (lengths include each document's terminating eos)."""

    tokens: np.ndarray
    doc_starts: np.ndarray
    doc_lengths: np.ndarray


@functools.lru_cache(maxsize=8)
def load_corpus(
    name: str, split: str, data_dir: str, path: str = '', text_key: str = 'text'
) -> Corpus:
    """Reads every document of a split once (cached in-process) -> Corpus."""
    if name == 'folder':
        docs = _folder_documents(path, split)
    else:
        if name in EMBEDDED:
            builder = EMBEDDED[name](data_dir=data_dir)
            if not builder.is_prepared():
                raise ValueError(
                    f'data.name={name!r}: not prepared in data_dir '
                    f'{data_dir!r}; call jaxbig.data.prepare(config) first'
                )
        else:
            builder = _tfds_builder(name, data_dir)
        try:
            source = builder.as_data_source(split=split)
        except Exception as e:
            raise ValueError(
                f'data split {split!r} not available for {name!r} '
                f'(splits: {sorted(builder.info.splits)})'
            ) from e
        docs = _tfds_documents(source, text_key)
    eos = bytes([ByteTokenizer.eos_id])
    docs = [d.replace(eos, b'') for d in docs]
    docs = [d for d in docs if d]
    lengths = np.array([len(d) + 1 for d in docs], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.frombuffer(b''.join(d + eos for d in docs), np.uint8)
    return Corpus(tokens, starts, lengths)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class LMPipeline:
    """Index-based LM batches; see the module docstring.

    get_batch(i) -> dict(inputs=int32[b, T], targets=int32[b, T], mask=float32[b, T]),
    b = batch_size // process_count host-local rows [p*b, (p+1)*b) of global batch i.
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        seq_len: int,
        pack: bool,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f'batch_size={batch_size} must be a positive multiple of '
                f'process_count={process_count}'
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f'process_index={process_index} not in [0, {process_count})')
        if seed < 0:
            raise ValueError(f'seed={seed} must be >= 0')
        self.corpus, self.seq_len, self.pack, self.seed = corpus, seq_len, pack, int(seed)
        self.global_batch_size = batch_size
        self.batch_size = batch_size // process_count
        self.row_offset = process_index * self.batch_size
        self.tokenizer = ByteTokenizer()
        if pack:
            self.num_sequences = len(corpus.tokens) // (seq_len + 1)
        else:
            self.num_sequences = len(corpus.doc_lengths)
        if self.num_sequences < 1:
            raise ValueError(
                f'data.seq_len={seq_len}: split has {len(corpus.tokens)} '
                'tokens, too small for a single sequence'
            )
        self._orders = {}

    def _order(self, epoch: int) -> grain.MapDataset:
        if epoch not in self._orders:
            if len(self._orders) >= 4:
                self._orders.clear()
            self._orders[epoch] = grain.MapDataset.range(self.num_sequences).shuffle(
                seed=_epoch_seed(self.seed, epoch)
            )
        return self._orders[epoch]

    def sequence_ids(self, i: int) -> np.ndarray:
        """int64[b]: indices (into one epoch's sequences) of this host's rows of batch i."""
        if i < 0:
            raise ValueError(f'batch index {i} must be >= 0')
        start = i * self.global_batch_size + self.row_offset
        out = np.empty(self.batch_size, np.int64)
        for r, g in enumerate(range(start, start + self.batch_size)):
            epoch, k = divmod(g, self.num_sequences)
            out[r] = self._order(epoch)[k]
        return out

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        """Host-local rows of global batch i: inputs/targets int32[b, T], mask float32[b, T]."""
        ids, span = self.sequence_ids(i), np.arange(self.seq_len + 1)
        if self.pack:
            seqs = self.corpus.tokens[ids[:, None] * (self.seq_len + 1) + span]
            mask = np.ones((len(ids), self.seq_len), np.float32)
        else:
            starts = self.corpus.doc_starts[ids][:, None]
            lengths = np.minimum(self.corpus.doc_lengths[ids], self.seq_len + 1)[:, None]
            valid = span < lengths
            seqs = np.where(
                valid,
                self.corpus.tokens[starts + np.minimum(span, lengths - 1)],
                ByteTokenizer.eos_id,
            )
            mask = valid[:, 1:].astype(np.float32)
        seqs = seqs.astype(np.int32)
        return {'inputs': seqs[:, :-1], 'targets': seqs[:, 1:], 'mask': mask}


def build_pipeline(
    config,
    *,
    split: str,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> LMPipeline:
    """LM pipeline over `split` of `config` (a data ConfigDict); batch_size is global."""
    seq_len = config.seq_len
    if not isinstance(seq_len, numbers.Integral) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f'data.seq_len={seq_len!r} must be an int >= 1')
    name = config.name
    if name == 'folder':
        corpus = load_corpus(name, split, '', _folder_root(config))
    else:
        corpus = load_corpus(
            name,
            split,
            resolve_data_dir(config.get('data_dir', '')),
            text_key=config.get('text_key', 'text'),
        )
    return LMPipeline(
        corpus,
        seq_len=int(seq_len),
        pack=config.get('pack', True),
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
