"""Tests for jaxbig.data: determinism, host sharding, epochs, splits, padding, errors."""


import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from jaxbig import data
from jaxbig.data.builders import pystdlib


def make_config(**kw):
    cfg = {
        'name': 'pystdlib',
        'data_dir': '',
        'path': '',
        'text_key': 'text',
        'seq_len': 64,
        'train_split': 'train',
        'val_split': 'validation',
        'pack': True,
    }
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope='session')
def cfg(tmp_path_factory):
    config = make_config(data_dir=str(tmp_path_factory.mktemp('tfds')))
    data.prepare(config)
    data.prepare(config)  # idempotent
    return config


def global_ids(pipe, n):
    """Epoch-local sequence indices of global positions [0, n)."""
    batches = -(-n // pipe.global_batch_size)
    return np.concatenate([pipe.sequence_ids(i) for i in range(batches)])[:n]


def split_stream(data_dir, split) -> np.ndarray:
    """uint8[n]: the split's non-empty documents, each followed by eos (NUL), from the records."""
    src = tfds.data_source('pystdlib', split=split, data_dir=data_dir)
    docs = (bytes(src[i]['text']) + b'\0' for i in range(len(src)) if src[i]['text'])
    return np.frombuffer(b''.join(docs), np.uint8)


def test_batches_deterministic_and_shifted(cfg):
    tokens = split_stream(cfg.data_dir, 'train')
    a = data.build_pipeline(cfg, split='train', batch_size=8, seed=0)
    b = data.build_pipeline(cfg, split='train', batch_size=8, seed=0)
    c = data.build_pipeline(cfg, split='train', batch_size=8, seed=1)
    for i in (0, 7, 12345):
        ba, bb, bc = a.get_batch(i), b.get_batch(i), c.get_batch(i)
        assert ba['inputs'].shape == ba['targets'].shape == ba['mask'].shape == (8, 64)
        assert ba['inputs'].dtype == ba['targets'].dtype == np.int32
        assert ba['mask'].dtype == np.float32 and np.all(ba['mask'] == 1)
        for k in ba:
            np.testing.assert_array_equal(ba[k], bb[k])
        assert not np.array_equal(ba['inputs'], bc['inputs'])
        np.testing.assert_array_equal(ba['inputs'][:, 1:], ba['targets'][:, :-1])
        assert ba['inputs'].min() >= 0 and ba['targets'].max() < 256
        # Each row is one contiguous (T+1)-token window of the split's stream.
        starts = a.sequence_ids(i) * 65
        for r, s in enumerate(starts):
            np.testing.assert_array_equal(ba['inputs'][r], tokens[s : s + 64])
            assert ba['targets'][r, -1] == tokens[s + 64]
    assert a.tokenizer.vocab_size == 256 and a.num_sequences > 1000


def test_hosts_concatenate_to_global_batch(cfg):
    one = data.build_pipeline(cfg, split='train', batch_size=8, seed=3)
    hosts = [
        data.build_pipeline(
            cfg, split='train', batch_size=8, seed=3, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    for i in (0, 5):
        parts = [h.get_batch(i) for h in hosts]
        assert parts[0]['inputs'].shape == (4, 64)
        for k in ('inputs', 'targets', 'mask'):
            np.testing.assert_array_equal(
                np.concatenate([p[k] for p in parts]), one.get_batch(i)[k]
            )
    with pytest.raises(ValueError, match='process_count'):
        data.build_pipeline(cfg, split='train', batch_size=7, seed=0, process_count=2)


def test_epochs_wrap_with_new_permutation(cfg):
    pipe = data.build_pipeline(
        make_config(data_dir=cfg.data_dir, seq_len=2048), split='validation', batch_size=48, seed=0
    )
    n = pipe.num_sequences
    ids = global_ids(pipe, 2 * n)
    assert sorted(ids[:n]) == sorted(ids[n:]) == list(range(n))
    assert not np.array_equal(ids[:n], ids[n:])
    # The batch that straddles the epoch boundary is well-formed.
    batch = pipe.get_batch(n // 48)
    assert batch['inputs'].shape == (48, 2048)


def test_splits_disjoint_and_sorted(cfg):
    paths = {}
    for split in ('train', 'validation'):
        src = tfds.data_source('pystdlib', split=split, data_dir=cfg.data_dir)
        paths[split] = [src[i]['path'].decode() for i in range(len(src))]
        assert paths[split] == sorted(paths[split])
        assert all(pystdlib.split_for_path(p) == split for p in paths[split])
    assert paths['validation'] and not set(paths['train']) & set(paths['validation'])
    assert 'site-packages' not in ''.join(paths['train'])
    assert not any('__pycache__' in p for p in paths['train'])


def test_unpacked_mask_zero_exactly_at_padding(cfg):
    pipe = data.build_pipeline(
        make_config(data_dir=cfg.data_dir, seq_len=512, pack=False),
        split='validation',
        batch_size=32,
        seed=0,
    )
    assert pipe.num_sequences == len(pipe.corpus.doc_lengths)
    batch, ids = pipe.get_batch(0), pipe.sequence_ids(0)
    lengths = np.minimum(pipe.corpus.doc_lengths[ids], 513)  # incl. terminating eos
    assert (lengths < 513).any() and (lengths == 513).any()
    t = np.arange(512)
    np.testing.assert_array_equal(batch['mask'], (t < lengths[:, None] - 1))
    assert np.all(batch['targets'][batch['mask'] == 0] == 0)
    assert np.all(batch['inputs'][t >= lengths[:, None]] == 0)
    np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])


def test_folder_dataset(tmp_path):
    root = tmp_path / 'docs'
    (root / 'sub').mkdir(parents=True)
    (root / '.hidden').mkdir()
    texts = {f'sub/f{k}.txt': f'document {k} héllo\n' * (k + 1) for k in range(40)}
    texts['top.md'] = '# top\n'
    for rel, text in texts.items():
        (root / rel).write_text(text, encoding='utf-8')
    (root / 'blob.bin').write_bytes(b'\x00\x01\x02')
    (root / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
    (root / '.hidden' / 'x.txt').write_text('hidden')
    config = make_config(name='folder', path=str(root), seq_len=16)
    data.prepare(config)
    for split in ('train', 'validation'):
        want = b''.join(
            texts[r].encode() + b'\0' for r in sorted(texts) if pystdlib.split_for_path(r) == split
        )
        if not want:
            continue
        pipe = data.build_pipeline(config, split=split, batch_size=4, seed=0)
        assert pipe.corpus.stream().tobytes() == want
        assert pipe.num_sequences == len(want) // 17
        assert pipe.get_batch(3)['inputs'].shape == (4, 16)


def test_errors(cfg, tmp_path):
    with pytest.raises(ValueError, match='data.path'):
        data.prepare(make_config(name='folder', path=str(tmp_path / 'missing')))
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'a.bin').write_bytes(b'\x00\xff')
    with pytest.raises(ValueError, match='no UTF-8 text'):
        data.build_pipeline(
            make_config(name='folder', path=str(tmp_path / 'bin')),
            split='train',
            batch_size=2,
            seed=0,
        )
    with pytest.raises(ValueError, match='not_a_real_dataset_xyz'):
        data.prepare(make_config(name='not_a_real_dataset_xyz', data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match='seq_len'):
        data.build_pipeline(
            make_config(data_dir=cfg.data_dir, seq_len=0), split='train', batch_size=2, seed=0
        )
    with pytest.raises(ValueError, match='too small'):
        data.build_pipeline(
            make_config(data_dir=cfg.data_dir, seq_len=10**8),
            split='validation',
            batch_size=2,
            seed=0,
        )
    with pytest.raises(ValueError, match='prepare'):
        data.build_pipeline(
            make_config(data_dir=str(tmp_path / 'empty')), split='train', batch_size=2, seed=0
        )


class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A generic TFDS text dataset with a custom text key. Unregistered, so the
    pipeline finds it only as prepared files in data_dir, like a `tfds build` output."""

    VERSION = tfds.core.Version('1.0.0')
    pkg_dir_path = epath.Path(__file__).parent
    code_path = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({'body': tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples()}

    def _generate_examples(self):
        for k in range(10):
            yield k, {'body': f'tiny document number {k}'}


def test_generic_tfds_dataset(tmp_path):
    TinyText(data_dir=str(tmp_path)).download_and_prepare(file_format='array_record')
    config = make_config(name='tiny_text', data_dir=str(tmp_path), text_key='body', seq_len=8)
    data.prepare(config)
    pipe = data.build_pipeline(config, split='train', batch_size=2, seed=0)
    assert len(pipe.corpus.doc_lengths) == 10
    assert pipe.num_sequences == pipe.corpus.num_tokens // 9


def test_tokenizer_round_trip():
    tok = data.ByteTokenizer()
    text = 'héllo wörld — 日本語 🐍 naïve café'
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode('utf-8'))
    assert ids.min() > 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode(np.concatenate([ids, [tok.eos_id] * 3])) == text
    assert tok.decode(ids[:-1]).endswith('\ufffd')  # truncated emoji -> replacement
