"""Language-modelling data: documents -> virtual token stream -> index-based batches.

Tokens are UTF-8 bytes by default; `data.tokenizer` = a tokenizer.json or SentencePiece
.model path (with `data.eos_id`) makes them that tokenizer's ids. Sources: an embedded or
prepared TFDS dataset (`data.name`), a folder of text files (`data.name='folder'`,
`data.path`), a Hugging Face dataset saved with `save_to_disk` (`data.name='hf_disk'`,
jaxbig/data/text/hf_disk.py), JSONL / Parquet files (`data.name='files'`, `data.path`,
`data.text_key`, `data.splits`: jaxbig.data.text.file_documents), or a weighted mixture of those
(`data.mixture`: jaxbig.data.mixture).

Reading a split is `jaxbig.data.text.documents`: its documents, the token stream they form
(each document followed by eos: NUL for bytes) and the length index that locates any token
of it. The stream's ids are computed once (`jaxbig.data.text.token_cache`, by `prepare`: one
tokenizing pass per split, cached next to the prepared data per tokenizer content) and
memory-mapped, so `get_batch` slices them, never tokenizes, and a host reads only the
pages of its own rows.

* `pack=True`: sequence k is `stream[k*(T+1) : (k+1)*(T+1)]` (the tail is dropped);
  mask is all ones.
* `pack=False`: sequence k is document k (with its eos) truncated to T+1 tokens and
  right-padded with eos; mask is 0 where the target is padding.

inputs = seq[:-1], targets = seq[1:]. Global batch i holds the sequences at global
positions i*B .. i*B+B-1 of an endless stream of epochs; epoch e visits all
`num_sequences` sequences in the order of `grain.MapDataset.range(n).shuffle(s_e)`,
s_e derived from (seed, e). So a batch is a pure function of (seed, i), whatever the
number of processes (each reads only its own rows): resuming at step k replays exactly
what an uninterrupted run would have seen.

`one_pass=True` (evaluators; `jaxbig.data.one_pass`): each sequence once — pack=True the
split's non-overlapping windows of T+1 tokens, pack=False its documents —, the first
`num_examples` (0 = all) of epoch 0's order, and `example_mask` float32[b] in the batch.

`prepare(config)` (process 0, before training) builds or checks the dataset and caches
the length index and token ids of the train and validation splits; `build_pipeline(config, ...)` ->
LMPipeline.
"""

import numbers
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxbig.data import mixture
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.shuffle import epoch_permutation
from jaxbig.data.text.documents import (
    EMBEDDED,
    Corpus,
    TfdsDocuments,
    _tfds_builder,
    encoding_for,
    resolve_data_dir,
)
from jaxbig.data.text.token_cache import load_corpus, load_stream
from jaxbig.data.text.tokenizers import ByteTokenizer

EOS = ByteTokenizer.eos_id


def prepare(config) -> None:
    """Idempotent. Builds embedded TFDS datasets into `config.data_dir` if needed (or
    checks that a folder exists or that any other TFDS dataset is prepared), then caches
    the length index of `config.train_split` and `config.val_split` (TFDS only)."""
    if config.get('mixture'):  # every source of a weighted mixture (jaxbig.data.mixture)
        for _, _, section in mixture.sources(config):
            prepare(section)
        return
    name, data_dir = config.name, resolve_data_dir(config.get('data_dir', ''))
    if name == 'folder':
        _folder_root(config)
        return
    if name in FILE_SOURCES:  # JSONL / Parquet or save_to_disk: index and ids cached once
        for split in dict.fromkeys((config.get('train_split', 'train'),
                                    config.get('val_split', 'validation'))):
            _files_corpus(config, split)
        return
    if name in EMBEDDED:
        builder = EMBEDDED[name](data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare(
                file_format='array_record',
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    else:
        builder = _tfds_builder(name, data_dir)
    splits = (config.get('train_split', 'train'), config.get('val_split', 'validation'))
    for split in dict.fromkeys(splits):
        try:
            documents = TfdsDocuments(builder, split, (config.get('text_key') or 'text'))
        except ValueError:  # not a split of this dataset: build_pipeline says so
            continue
        load_stream(documents, _encoding(config))


def _encoding(config):
    """Bytes (the default) or `data.tokenizer`'s ids (a tokenizer.json; `data.eos_id`)."""
    return encoding_for(config.get('tokenizer', 'bytes'), config.get('eos_id', -1))


def _folder_root(config) -> str:
    path = config.get('path', '')
    root = os.path.expanduser(path) if path else ''
    if not root or not os.path.isdir(root):
        raise ValueError(f'data.path: folder {path!r} does not exist (data.name=folder)')
    return root


FILE_SOURCES = ('files', 'hf_disk')  # JSONL / Parquet; a Hugging Face save_to_disk


def _files_corpus(config, split: str) -> Corpus:
    """The Corpus of `split` of a JSONL / Parquet source (data.name='files') or a saved
    Hugging Face dataset ('hf_disk')."""
    return load_corpus(config.name, split, resolve_data_dir(config.get('data_dir', '')),
                       config.get('path', ''), config.get('text_key') or 'text',
                       config.get('tokenizer', 'bytes'), config.get('eos_id', -1),
                       config.get('splits', ''))


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
        one_pass: bool = False,
        num_examples: int = 0,
        split: str = '',
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
        self.tokenizer = getattr(corpus.encoding, 'tokenizer', ByteTokenizer())
        if pack:
            self.num_sequences = corpus.num_tokens // (seq_len + 1)
        else:
            self.num_sequences = len(corpus.doc_ids)
        if self.num_sequences < 1:
            raise ValueError(
                f'data.seq_len={seq_len}: split has {corpus.num_tokens} '
                'tokens, too small for a single sequence'
            )
        self._orders = {}
        self.one_pass = one_pass_lib.plan(
            one_pass, num_examples, self.num_sequences, split=split, batch_size=batch_size,
            process_index=process_index, process_count=process_count,
            what='sequences' if pack else 'documents')
        one_pass_lib.attach(self, self.one_pass)

    def _order(self, epoch: int) -> np.ndarray:
        """int64[num_sequences]: epoch `epoch`'s order, that of
        `grain.MapDataset.range(num_sequences).shuffle(s_e)` (computed once per epoch)."""
        if epoch not in self._orders:
            if len(self._orders) >= 4:
                self._orders.clear()
            self._orders[epoch] = epoch_permutation(
                self.num_sequences, _epoch_seed(self.seed, epoch)
            )
        return self._orders[epoch]

    def sequence_ids(self, i: int) -> np.ndarray:
        """int64[b]: indices (into one epoch's sequences) of this host's rows of batch i (a
        one pass: of the first num_examples of epoch 0, padding rows repeating the last)."""
        if self.one_pass is not None:
            return self._order(0)[self.one_pass.rows(i)[0]]
        if i < 0:
            raise ValueError(f'batch index {i} must be >= 0')
        start = i * self.global_batch_size + self.row_offset
        rows = np.arange(start, start + self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(rows, self.num_sequences)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs).tolist():  # one, or two where batch i spans epochs
            sel = epochs == epoch
            out[sel] = self._order(epoch)[within[sel]]
        return out

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        """Host-local rows of global batch i: inputs/targets int32[b, T], mask float32[b, T].
        Reads only the documents these rows overlap."""
        ids, window = self.sequence_ids(i), self.seq_len + 1
        if self.pack:
            seqs = self.corpus.read(ids * window, window)
            mask = np.ones((len(ids), self.seq_len), np.float32)
        else:
            records = self.corpus.doc_ids[ids]
            docs = self.corpus.documents(records)
            encoding = self.corpus.encoding
            seqs = np.full((len(ids), window), encoding.eos_id, encoding.dtype)
            lengths = np.empty(len(ids), np.int64)
            for row, r in enumerate(records.tolist()):
                lengths[row] = min(len(docs[r]), window)
                seqs[row, : lengths[row]] = docs[r][: lengths[row]]
            mask = (np.arange(1, window) < lengths[:, None]).astype(np.float32)
        seqs = seqs.astype(np.int32)
        batch = {'inputs': seqs[:, :-1], 'targets': seqs[:, 1:], 'mask': mask}
        if self.one_pass is not None:
            batch['example_mask'] = self.one_pass.rows(i)[1]
        return batch


def build_pipeline(
    config,
    *,
    split: str,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    one_pass: bool = False,
    num_examples: int = 0,
) -> LMPipeline:
    """LM pipeline over `split` of `config` (a data ConfigDict); batch_size is global.
    With `data.mixture`, a MixturePipeline of the sources (training; an evaluator scores
    each source's split on its own: jaxbig.data.mixture)."""
    if config.get('mixture'):
        if one_pass:
            raise ValueError('data.mixture: a one-pass pipeline reads one source; evaluate '
                             'each source (the loss evaluator does: val/<label>/...)')
        labels, weights, sections = zip(*mixture.sources(config))
        rows = mixture.allocate(weights, batch_size, process_count)
        if (rows == 0).any():
            empty = [lab for lab, n in zip(labels, rows) if n == 0]
            raise ValueError(f'data.mixture: {empty} get no rows of a {batch_size}-row batch; '
                             'raise their weight or the batch size')
        pipes = [build_pipeline(section, split=split, batch_size=int(n),
                                seed=_epoch_seed(seed, 1_000_003 + k),
                                process_index=process_index, process_count=process_count)
                 for k, (section, n) in enumerate(zip(sections, rows))]
        return mixture.MixturePipeline(labels, rows, pipes)
    seq_len = config.seq_len
    if not isinstance(seq_len, numbers.Integral) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f'data.seq_len={seq_len!r} must be an int >= 1')
    name = config.name
    tok = dict(tokenizer=config.get('tokenizer', 'bytes'), eos_id=config.get('eos_id', -1))
    if name == 'folder':
        corpus = load_corpus(name, split, '', _folder_root(config), **tok)
    elif name in FILE_SOURCES:
        corpus = _files_corpus(config, split)
    else:
        corpus = load_corpus(
            name,
            split,
            resolve_data_dir(config.get('data_dir', '')),
            text_key=(config.get('text_key') or 'text'),
            **tok,
        )
    return LMPipeline(
        corpus,
        seq_len=int(seq_len),
        pack=config.get('pack', True),
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        one_pass=one_pass,
        num_examples=num_examples,
        split=split,
    )
