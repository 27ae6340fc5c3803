"""Token ids computed once (jaxbig.data.text.token_cache): batches read from the cached stream
equal batches that tokenize on the fly (bytes and a trained BPE, packed and not), reading
them never tokenizes, a stale cache (a retrained tokenizer, other ids, a damaged file) is
rebuilt, old caches are removed least recently used first, two processes reading their halves concurrently (racing to build the cache) give
the 1-process batch byte for byte; a sweep's report tabulates val/bits_per_byte."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_LM
from test_data_sharded_reading import EdgeDocs, assert_batch_equal, config, edge_texts

from jaxbig.data.pipelines import lm
from jaxbig.data.text import documents, token_cache, tokenizer_training

T = 16


def train_bpe(out, vocab_size=300, texts=None) -> str:
    os.makedirs(out, exist_ok=True)
    texts = [t.replace('\0', '') for t in (texts or edge_texts()) if t.replace('\0', '')]
    return tokenizer_training.train_bpe(texts, vocab_size, str(out))


@pytest.fixture(scope='module')
def edge_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('edge_tokens')
    EdgeDocs(data_dir=str(path)).download_and_prepare(file_format='array_record')
    return path


@pytest.fixture(scope='module')
def bpe(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp('bpe'))


def on_the_fly(pipe) -> lm.LMPipeline:
    """The same pipeline over a Corpus without the token cache (reads records, encodes)."""
    c = pipe.corpus
    return lm.LMPipeline(documents.Corpus(c.records, c.ends, encoding=c.encoding),
                         seq_len=pipe.seq_len, pack=pipe.pack,
                         batch_size=pipe.global_batch_size, seed=pipe.seed)


def all_caches(data_dir) -> set:
    return set(data_dir.glob('edge_docs/1.0.0/jaxbig-tokens.train.*.npy'))


def cache_files(data_dir, tokenizer) -> list:
    """The token cache files of the train split under `tokenizer`'s current content."""
    name = documents.encoding_for(tokenizer).name
    return sorted(p for p in all_caches(data_dir)
                  if (name in p.name if name != 'bytes' else 'tokenizer-' not in p.name))


@pytest.mark.parametrize('pack', [True, False])
@pytest.mark.parametrize('kind', ['bytes', 'bpe'])
def test_cached_batches_equal_on_the_fly_and_never_tokenize(edge_dir, bpe, monkeypatch, kind,
                                                            pack):
    tokenizer = bpe if kind == 'bpe' else 'bytes'
    cfg = config(edge_dir, pack=pack, tokenizer=tokenizer, eos_id=-1)
    token_cache.load_corpus.cache_clear()
    lm.prepare(cfg)
    (npy,) = cache_files(edge_dir, tokenizer)
    tokens = np.load(npy)
    assert tokens.dtype == (np.uint8 if kind == 'bytes' else np.uint16)
    pipe = lm.build_pipeline(cfg, split='train', batch_size=8, seed=4)
    reference = on_the_fly(pipe)
    np.testing.assert_array_equal(pipe.corpus.tokens, tokens)
    if kind == 'bpe':  # the tokenizer compresses: fewer tokens than bytes, ids past 255
        assert len(tokens) < token_cache.load_corpus('edge_docs', 'train', str(edge_dir)).num_tokens
        assert tokens.max() >= 256
    # Reading the cache must not touch the records nor the tokenizer.
    def refuse(*args, **kwargs):
        raise AssertionError('tokenized or read a record while reading the cache')
    monkeypatch.setattr(type(pipe.corpus.records), 'read', refuse)
    monkeypatch.setattr(type(pipe.corpus.encoding), '__call__', refuse)
    monkeypatch.setattr(type(pipe.corpus.encoding), 'encode_many', refuse)
    cached = [pipe.get_batch(i) for i in range(3 * pipe.num_sequences // 8 + 1)]
    monkeypatch.undo()
    for i, batch in enumerate(cached):
        assert_batch_equal(batch, reference.get_batch(i))
    token_cache.load_corpus.cache_clear()


@pytest.fixture
def own_copy(edge_dir, tmp_path):
    shutil.copytree(edge_dir, tmp_path / 'data')
    token_cache.load_corpus.cache_clear()
    yield tmp_path / 'data'
    token_cache.load_corpus.cache_clear()


def built(data_dir, tokenizer, monkeypatch) -> tuple[lm.LMPipeline, list]:
    """A fresh pipeline over `data_dir`, and the list of passes that tokenized the split."""
    passes, real = [], documents.compute_ends
    monkeypatch.setattr(documents, 'compute_ends',
                        lambda d, chunk=1024, **kw: passes.append(1) or real(d, **kw))
    token_cache.load_corpus.cache_clear()
    pipe = lm.build_pipeline(config(data_dir, tokenizer=tokenizer, eos_id=-1), split='train',
                             batch_size=8, seed=0)
    for i in (0, 5):
        assert_batch_equal(pipe.get_batch(i), on_the_fly(pipe).get_batch(i))
    return pipe, passes


def test_retrained_tokenizer_gets_its_own_cache(own_copy, tmp_path, monkeypatch):
    path = train_bpe(tmp_path / 'tok', 310)  # not the `bpe` fixture's (cached already)
    before = all_caches(own_copy)
    first, passes = built(own_copy, path, monkeypatch)
    assert passes == [1] and len(all_caches(own_copy) - before) == 1
    _, passes = built(own_copy, path, monkeypatch)
    assert passes == []  # reused
    shutil.copy(train_bpe(tmp_path / 'tok2', 340, [t * 2 for t in edge_texts()]), path)
    second, passes = built(own_copy, path, monkeypatch)  # same path, other content
    assert passes == [1] and len(all_caches(own_copy) - before) == 2
    assert len(cache_files(own_copy, path)) == 1
    assert not np.array_equal(first.corpus.tokens[:200], second.corpus.tokens[:200])



def test_old_caches_are_removed_least_recently_used_first(own_copy, bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, 'KEEP_CACHES', 2)
    other = train_bpe(tmp_path / 'tok', 310)
    built(own_copy, 'bytes', monkeypatch)
    built(own_copy, bpe, monkeypatch)
    assert cache_files(own_copy, 'bytes') and cache_files(own_copy, bpe)
    os.utime(cache_files(own_copy, bpe)[0].with_suffix('.json'), (1, 1))  # bpe: used long ago
    _, passes = built(own_copy, 'bytes', monkeypatch)  # reused: marks bytes used
    assert passes == []
    indexes = set(own_copy.glob('edge_docs/1.0.0/jaxbig-index.train.*'))
    _, passes = built(own_copy, other, monkeypatch)  # a third tokenizer: one must go
    assert passes == [1]
    assert cache_files(own_copy, 'bytes') and cache_files(own_copy, other)
    assert cache_files(own_copy, bpe) == [] and len(all_caches(own_copy)) == 2
    gone = indexes - set(own_copy.glob('edge_docs/1.0.0/jaxbig-index.train.*'))
    assert len(gone) == 2 and all(documents.encoding_for(bpe).name in p.name for p in gone)
    _, passes = built(own_copy, bpe, monkeypatch)  # asked for again: rebuilt, bytes' goes
    assert passes == [1] and cache_files(own_copy, bpe) and not cache_files(own_copy, 'bytes')


def _other_ids(npy, meta):
    tokens = np.load(npy)
    np.save(npy, (tokens + 1) % 300)  # the ids of some other tokenizer, same shape


@pytest.mark.parametrize('damage', [
    lambda npy, meta: _other_ids(npy, meta),
    lambda npy, meta: npy.write_bytes(npy.read_bytes()[:300]),  # truncated
    lambda npy, meta: npy.unlink(),
    lambda npy, meta: meta.write_text(json.dumps(dict(json.loads(meta.read_text()),
                                                      encoding='tokenizer-0-eos0'))),
], ids=['other_ids', 'truncated', 'npy_missing', 'other_encoding'])
def test_stale_or_damaged_cache_is_rebuilt(own_copy, bpe, monkeypatch, caplog, damage):
    built(own_copy, bpe, monkeypatch)
    (npy,) = cache_files(own_copy, bpe)
    good = np.load(npy)
    damage(npy, npy.with_suffix('.json'))
    _, passes = built(own_copy, bpe, monkeypatch)
    assert passes == [1] and 'rebuilding token cache' in caplog.text
    np.testing.assert_array_equal(np.load(npy), good)
    _, passes = built(own_copy, bpe, monkeypatch)
    assert passes == []  # the rebuilt cache is reused


READER = r'''
import sys, numpy as np, ml_collections
from jaxbig.data.pipelines import lm
data_dir, tokenizer, p, n, out = sys.argv[1:]
cfg = ml_collections.ConfigDict(dict(name='edge_docs', data_dir=data_dir, path='',
    text_key='text', seq_len=16, pack=True, train_split='train', val_split='validation',
    tokenizer=tokenizer, eos_id=-1))
if int(n) == 1:
    lm.prepare(cfg)
pipe = lm.build_pipeline(cfg, split='train', batch_size=8, seed=7, process_index=int(p),
                         process_count=int(n))
assert pipe.corpus.tokens is not None
np.save(out, np.stack([pipe.get_batch(i)['inputs'] for i in range(40)]))
'''


def test_two_processes_read_the_one_process_batches(edge_dir, bpe, tmp_path):
    fresh = tmp_path / 'data'  # no cache yet: both processes race to build it
    shutil.copytree(edge_dir / 'edge_docs', fresh / 'edge_docs',
                    ignore=shutil.ignore_patterns('jaxbig-*'))
    env = dict(os.environ, JAX_PLATFORMS='cpu')

    def start(p, n):
        return subprocess.Popen([sys.executable, '-c', READER, str(fresh), bpe, str(p), str(n),
                                 str(tmp_path / f'{p}of{n}.npy')], cwd=REPO, env=env,
                                stderr=subprocess.PIPE, text=True)

    procs = [start(0, 2), start(1, 2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    assert start(0, 1).wait(timeout=300) == 0
    halves = [np.load(tmp_path / f'{p}of2.npy') for p in (0, 1)]
    whole = np.load(tmp_path / '0of1.npy')
    assert halves[0].shape == (40, 4, T) and whole.shape == (40, 8, T)
    assert np.concatenate(halves, axis=1).tobytes() == whole.tobytes()
    assert len(cache_files(fresh, bpe)) == 1 and not list(fresh.glob('edge_docs/1.0.0/.tmp-*'))


SWEEP = '''
from jaxbig import sweep

def get_sweep():
    return sweep.axis('data.tokenizer', ['bytes', {bpe!r}])
'''


@pytest.mark.slow
def test_sweep_report_tabulates_bits_per_byte(tfds_dir, tmp_path):
    """A 2-point tokenizer sweep (bytes vs a BPE): results.csv / .md carry val/bits_per_byte
    (final and best = the minimum), which compares the two where val/loss cannot."""
    import csv

    from jaxbig import writers
    texts = [t for t in tokenizer_training.split_texts(
        config(tfds_dir, name='pystdlib'), 'validation')][:40]
    bpe = train_bpe(tmp_path / 'tok', 400, texts)
    (tmp_path / 'tok.py').write_text(SWEEP.format(bpe=bpe))
    workdir = tmp_path / 'sweep'
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxbig', 'sweep', '--config', 'experiments/lm.py:steps=3',
         '--sweep', str(tmp_path / 'tok.py'), '--workdir', str(workdir), '--parallel', '2',
         *TINY_LM, '--config.evals.val.num_examples=16', '--config.train.eval_every=3'],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
        timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r['status'] for r in rows} == {'done'}
    for row in rows:
        logged = [m['val/bits_per_byte'] for m in writers.read_metrics(str(workdir / row['run']))
                  if 'val/bits_per_byte' in m]
        assert float(row['val/bits_per_byte']) == logged[-1] > 0
        assert float(row['best val/bits_per_byte']) == min(logged)
    header = (workdir / 'results.md').read_text().split('\n| ')[1]
    assert 'val/bits_per_byte' in header and 'best val/bits_per_byte' in header
