"""jaxbig.data.pipelines.lm reads only what a host's rows need: batches equal the old whole-split
in-memory definition (rebuilt here with NumPy from the raw documents), hosts concatenate to
the global batch, an instrumented source sees only the documents a host's rows overlap, and
the cached length index is reused, and rebuilt when stale or corrupt."""
import json
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from jaxbig.data.pipelines import lm
from jaxbig.data.text import documents, token_cache

T = 16  # short windows: rows span several short documents, long documents several rows


def edge_texts() -> list[str]:
    """Documents with every case the stream must handle: empty, NUL-only (skipped), NULs
    inside, 1 byte, multi-byte UTF-8, and longer than many windows."""
    rng = np.random.default_rng(0)
    texts = []
    for k in range(240):
        kind = k % 8
        n = int(rng.integers(1, 60))
        body = ''.join(chr(c) for c in rng.integers(32, 127, n))
        texts.append(
            ['', '\0\0', f'a\0b{body}\0', 'x', f'é日🐍{body}', body * 12, body, '\0'][kind]
        )
    return texts


class EdgeDocs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS text dataset of `edge_texts()`, found by name only as prepared files."""

    VERSION = tfds.core.Version('1.0.0')
    pkg_dir_path = epath.Path(__file__).parent
    code_path = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples()}

    def _generate_examples(self):
        for k, text in enumerate(edge_texts()):
            yield k, {'text': text}


def config(data_dir, **kw):
    cfg = dict(name='edge_docs', data_dir=str(data_dir), path='', text_key='text', seq_len=T,
               pack=True, train_split='train', val_split='validation')
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope='module')
def edge_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('edge')
    EdgeDocs(data_dir=str(path)).download_and_prepare(file_format='array_record')
    lm.prepare(config(path))  # no 'validation' split: skipped
    return path


def raw_docs(name, split, data_dir) -> list[bytes]:
    src = tfds.data_source(name, split=split, data_dir=str(data_dir))
    return [bytes(src[i]['text']) for i in range(len(src))]


class Reference:
    """The pre-index definition: the whole split as one in-memory uint8 stream."""

    def __init__(self, docs: list[bytes]):
        cleaned = [d.replace(b'\0', b'') for d in docs]
        self.record_lengths = np.array([len(d) + 1 if d else 0 for d in cleaned], np.int64)
        self.record_ends = np.cumsum(self.record_lengths)
        self.kept = np.flatnonzero(self.record_lengths)
        kept = [d for d in cleaned if d]
        self.tokens = np.frombuffer(b''.join(d + b'\0' for d in kept), np.uint8)
        self.lengths = np.array([len(d) + 1 for d in kept], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def batch(self, ids, seq_len, pack):
        span = np.arange(seq_len + 1)
        if pack:
            seqs = self.tokens[ids[:, None] * (seq_len + 1) + span]
            mask = np.ones((len(ids), seq_len), np.float32)
        else:
            lengths = np.minimum(self.lengths[ids], seq_len + 1)[:, None]
            valid = span < lengths
            at = self.starts[ids][:, None] + np.minimum(span, lengths - 1)
            seqs = np.where(valid, self.tokens[at], 0)
            mask = valid[:, 1:].astype(np.float32)
        seqs = seqs.astype(np.int32)
        return {'inputs': seqs[:, :-1], 'targets': seqs[:, 1:], 'mask': mask}

    def overlapping_records(self, ids, seq_len, pack) -> set[int]:
        """Records holding any byte of sequences `ids` (brute force over every record)."""
        if not pack:
            return set(self.kept[ids].tolist())
        lo = ids[:, None] * (seq_len + 1)
        starts = self.record_ends - self.record_lengths
        hit = (starts < lo + seq_len + 1) & (self.record_ends > lo) & (self.record_lengths > 0)
        return set(np.flatnonzero(hit.any(0)).tolist())


@pytest.fixture(scope='module')
def edge_ref(edge_dir):
    return Reference(raw_docs('edge_docs', 'train', edge_dir))


def assert_batch_equal(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize('pack', [True, False])
def test_global_batches_equal_in_memory_definition(edge_dir, edge_ref, pack):
    ref = edge_ref
    assert 0 < len(ref.kept) < len(ref.record_lengths)  # some records are skipped
    pipe = lm.build_pipeline(config(edge_dir, pack=pack), split='train', batch_size=8, seed=3)
    want_n = len(ref.tokens) // (T + 1) if pack else len(ref.lengths)
    assert pipe.num_sequences == want_n
    # Three epochs' worth of batches, so every sequence (and document) is produced.
    for i in range(3 * want_n // 8 + 1):
        assert_batch_equal(pipe.get_batch(i), ref.batch(pipe.sequence_ids(i), T, pack))
    assert pipe.corpus.stream().tobytes() == ref.tokens.tobytes()


@pytest.mark.parametrize('pack,seq_len', [(True, 128), (False, 512)])
def test_pystdlib_batches_equal_in_memory_definition(tfds_dir, pack, seq_len):
    ref = Reference(raw_docs('pystdlib', 'validation', tfds_dir))
    cfg = config(tfds_dir, name='pystdlib', pack=pack, seq_len=seq_len)
    pipe = lm.build_pipeline(cfg, split='validation', batch_size=32, seed=0)
    for i in (0, 1, 17, 10**6):
        assert_batch_equal(pipe.get_batch(i), ref.batch(pipe.sequence_ids(i), seq_len, pack))


@pytest.mark.parametrize('pack', [True, False])
@pytest.mark.parametrize('hosts', [1, 2, 4])
def test_hosts_concatenate_to_global_batch(edge_dir, edge_ref, pack, hosts):
    cfg = config(edge_dir, pack=pack)
    pipes = [
        lm.build_pipeline(cfg, split='train', batch_size=8, seed=5, process_index=p,
                          process_count=hosts)
        for p in range(hosts)
    ]
    one = lm.build_pipeline(cfg, split='train', batch_size=8, seed=5)
    for i in (0, 9, 31):
        parts = [p.get_batch(i) for p in pipes]
        assert parts[0]['inputs'].shape == (8 // hosts, T)
        glued = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        assert_batch_equal(glued, edge_ref.batch(one.sequence_ids(i), T, pack))


class CountingRecords:
    """Wraps a record reader; remembers every record id it is asked for."""

    def __init__(self, records):
        self.records, self.calls = records, []

    def __len__(self):
        return len(self.records)

    def __getattr__(self, name):  # fingerprint, cache_dir
        return getattr(self.records, name)

    def read(self, ids):
        ids = [int(i) for i in ids]
        self.calls.append(ids)
        return self.records.read(ids)


def host_pipes(corpus, *, hosts, pack, seq_len, batch_size):
    """One pipeline per host, each over its own counting reader and empty cache."""
    out = []
    for p in range(hosts):
        counting = CountingRecords(corpus.records)
        pipe = lm.LMPipeline(documents.Corpus(counting, corpus.ends), seq_len=seq_len,
                             pack=pack, batch_size=batch_size, seed=1, process_index=p,
                             process_count=hosts)
        out.append((pipe, counting))
    return out


@pytest.mark.parametrize('pack', [True, False])
def test_each_host_reads_only_documents_of_its_rows(edge_dir, edge_ref, pack):
    corpus = token_cache.load_corpus('edge_docs', 'train', str(edge_dir))
    for pipe, counting in host_pipes(corpus, hosts=4, pack=pack, seq_len=T, batch_size=8):
        seen = set()
        for i in range(6):
            before = len(counting.calls)
            pipe.get_batch(i)
            fetched = {r for call in counting.calls[before:] for r in call}
            needed = edge_ref.overlapping_records(pipe.sequence_ids(i), T, pack)
            assert fetched == needed - seen  # all it needs, once, and nothing else
            seen |= fetched
        assert len(seen) < len(corpus.ends) / 4


def test_pystdlib_hosts_read_far_less_than_the_split(tfds_dir):
    ref = Reference(raw_docs('pystdlib', 'train', tfds_dir))
    corpus = token_cache.load_corpus('pystdlib', 'train', tfds_dir)
    for pipe, counting in host_pipes(corpus, hosts=4, pack=True, seq_len=128, batch_size=32):
        batch = pipe.get_batch(7)
        fetched = [r for call in counting.calls for r in call]
        assert len(fetched) == len(set(fetched)) < len(corpus.ends) // 20  # 8 rows of 129 bytes
        assert set(fetched) == ref.overlapping_records(pipe.sequence_ids(7), 128, True)
        assert_batch_equal(batch, ref.batch(pipe.sequence_ids(7), 128, True))


@pytest.fixture
def own_copy(edge_dir, tmp_path):
    """A private copy of the prepared dataset (its index included) to damage."""
    shutil.copytree(edge_dir, tmp_path / 'data')
    token_cache.load_corpus.cache_clear()
    yield tmp_path / 'data'
    token_cache.load_corpus.cache_clear()


def index_files(data_dir):
    (npy,) = data_dir.glob('edge_docs/1.0.0/jaxbig-index.train.text.*.npy')
    return npy, npy.with_suffix('.json')


def build(data_dir, edge_ref):
    """A fresh pipeline (no in-process cache) whose batches must equal the reference."""
    token_cache.load_corpus.cache_clear()
    pipe = lm.build_pipeline(config(data_dir), split='train', batch_size=8, seed=0)
    assert_batch_equal(pipe.get_batch(2), edge_ref.batch(pipe.sequence_ids(2), T, True))
    return pipe


def test_index_reused_not_recomputed(own_copy, edge_ref, monkeypatch):
    npy, meta = index_files(own_copy)
    np.testing.assert_array_equal(np.load(npy), edge_ref.record_ends)
    assert json.loads(meta.read_text())['fingerprint']['num_records'] == 240

    def recompute(records, chunk=1024, **kwargs):
        raise AssertionError('index recomputed although cached')

    monkeypatch.setattr(documents, 'compute_ends', recompute)
    for _ in range(2):
        pipe = build(own_copy, edge_ref)
    calls = CountingRecords(pipe.corpus.records)
    documents.load_index(calls)  # opening it re-measures only a few records
    assert len({r for c in calls.calls for r in c}) <= documents.SPOT_CHECKS


def _swap_first_lengths(npy):
    lengths = np.diff(np.load(npy), prepend=0)
    assert lengths[0] != lengths[2]  # same total, wrong positions
    lengths[[0, 2]] = lengths[[2, 0]]
    np.save(npy, np.cumsum(lengths))


def _fingerprint(meta):
    info = json.loads(meta.read_text())
    info['fingerprint']['num_records'] += 1
    meta.write_text(json.dumps(info))


@pytest.mark.parametrize('damage', [
    lambda npy, meta: npy.write_bytes(b'not an npy file'),
    lambda npy, meta: npy.write_bytes(npy.read_bytes()[:200]),  # truncated
    lambda npy, meta: npy.unlink(),
    lambda npy, meta: meta.write_text('{"format": 1,'),  # unparsable
    lambda npy, meta: _fingerprint(meta),  # built for other data
    lambda npy, meta: _swap_first_lengths(npy),  # stale lengths, same total
], ids=['garbage', 'truncated', 'npy_missing', 'bad_json', 'fingerprint', 'stale_lengths'])
def test_stale_or_corrupt_index_is_rebuilt(own_copy, edge_ref, monkeypatch, caplog, damage):
    npy, meta = index_files(own_copy)
    damage(npy, meta)
    computed = []
    real = documents.compute_ends
    monkeypatch.setattr(documents, 'compute_ends',
                        lambda d, chunk=1024, **kw: computed.append(1) or real(d, **kw))
    build(own_copy, edge_ref)
    assert computed == [1] and 'rebuilding length index' in caplog.text
    np.testing.assert_array_equal(np.load(npy), edge_ref.record_ends)  # rewritten, valid
    build(own_copy, edge_ref)
    assert computed == [1]  # the rebuilt index is reused


def test_index_disagreeing_with_data_is_a_clear_error(edge_dir, edge_ref):
    corpus = token_cache.load_corpus('edge_docs', 'train', str(edge_dir))
    wrong = corpus.ends.copy()
    wrong[5:] += 3  # record 5 claims 3 more tokens than it has
    pipe = lm.LMPipeline(documents.Corpus(corpus.records, wrong), seq_len=T, pack=False,
                         batch_size=len(edge_ref.kept), seed=0)
    with pytest.raises(ValueError, match='record 5 has .* length index says'):
        pipe.get_batch(0)
