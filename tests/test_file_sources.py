"""JSONL / Parquet text sources (data.name='files', jaxbig.data.text.file_documents): every
format yields the same token stream as a NumPy reference of the documents, held-out
fractions are exact, disjoint and stable, file splits follow their globs, the caches are
keyed by the files' content, bad input is one line, and `jaxbig tokenizer train` reads
them. `jaxbig train` on them (a mixture of two such sources): tests/test_mixture.py."""

import gzip
import json
import os

import jax
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jaxbig import defaults
from jaxbig.data.text import token_cache
from jaxbig.data.text.file_documents import FileDocuments, parse_splits

DOCS = [f'def f{i}(x):\n    return x * {i}  # ünïcode {"z" * i}\n' for i in range(23)]


def _write(path, docs, key='text'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ''.join(json.dumps({key: d, 'meta': i}) + '\n' * (1 + i % 2)  # blank lines too
                    for i, d in enumerate(docs))
    if path.endswith('.parquet'):
        pq.write_table(pa.table({key: docs}), path, row_group_size=3)
    elif path.endswith('.gz'):
        with gzip.open(path, 'wt', encoding='utf-8') as f:
            f.write(lines)
    elif path.endswith('.zst'):
        with open(path, 'wb') as f:
            f.write(zstandard.ZstdCompressor().compress(lines.encode('utf-8')))
    else:
        with open(path, 'w', encoding='utf-8') as f:
            f.write(lines)


def _stream(docs):
    """The reference: each document's UTF-8 bytes followed by eos (NUL), in order."""
    return np.frombuffer(b''.join(d.encode('utf-8') + b'\0' for d in docs), np.uint8)


@pytest.mark.parametrize('layout', ['one.jsonl', 'one.jsonl.gz', 'one.jsonl.zst', 'one.parquet',
                                    'mixed'])
def test_every_format_gives_the_reference_stream(tmp_path, layout):
    root = tmp_path / 'corpus'
    if layout == 'mixed':  # files are read in sorted order: a.jsonl, b.jsonl.zst, c.parquet
        for name, part in (('a.jsonl', DOCS[:7]), ('sub/b.jsonl.zst', DOCS[7:15]),
                           ('sub/c.parquet', DOCS[15:])):
            _write(str(root / name), part)
    else:
        _write(str(root / layout), DOCS)
    token_cache.load_corpus.cache_clear()
    corpus = token_cache.load_corpus('files', 'train', str(tmp_path / 'data'), str(root),
                                     splits='train=*')
    np.testing.assert_array_equal(np.asarray(corpus.read(np.array([0]), corpus.num_tokens))[0],
                                  _stream(DOCS))
    assert len(corpus.doc_ids) == len(DOCS)


def test_held_out_fraction_is_exact_disjoint_and_stable(tmp_path):
    _write(str(tmp_path / 'c' / 'a.jsonl'), DOCS[:10])
    _write(str(tmp_path / 'c' / 'b.parquet'), DOCS[10:])
    args = (str(tmp_path / 'c'),)
    train = FileDocuments(*args, 'train', 'text', 'validation=0.25', str(tmp_path / 'd'))
    val = FileDocuments(*args, 'validation', 'text', 'validation=0.25', str(tmp_path / 'd'))
    assert len(val) == round(0.25 * len(DOCS)) and len(train) + len(val) == len(DOCS)
    assert not set(train.ids) & set(val.ids)
    texts = train.read(range(len(train))) + val.read(range(len(val)))
    assert sorted(texts) == sorted(d.encode('utf-8') for d in DOCS)
    again = FileDocuments(*args, 'validation', 'text', 'validation=0.25', str(tmp_path / 'e'))
    np.testing.assert_array_equal(again.ids, val.ids)  # not a function of the cache's place
    assert val.read([len(val) - 1, 0]) == val.read([len(val) - 1]) + val.read([0])


def test_splits_by_file_glob_and_content_keyed_cache(tmp_path):
    root = tmp_path / 'c'
    _write(str(root / 'train-0.jsonl'), DOCS[:12])
    _write(str(root / 'train-1.parquet'), DOCS[12:20])
    _write(str(root / 'val.jsonl.gz'), DOCS[20:])
    spec = 'train=train-*,validation=val.*'
    val = FileDocuments(str(root), 'validation', 'text', spec, str(tmp_path / 'd'))
    train = FileDocuments(str(root), 'train', 'text', spec, str(tmp_path / 'd'))
    assert val.read(range(len(val))) == [d.encode('utf-8') for d in DOCS[20:]]
    assert train.read(range(len(train))) == [d.encode('utf-8') for d in DOCS[:20]]
    assert train.cache_dir == val.cache_dir  # one folder per source, a file pair per split
    _write(str(root / 'val.jsonl.gz'), DOCS[19:])  # the data changed: a new cache
    assert FileDocuments(str(root), 'validation', 'text', spec,
                         str(tmp_path / 'd')).cache_dir != val.cache_dir


@pytest.mark.parametrize('case,message', [
    ('no files', "data.path="),
    ('text key', "a.jsonl:1: no data.text_key='text' (found ['content', 'meta'])"),
    ('parquet key', "b.parquet: no data.text_key='text' column"),
    ('not json', 'a.jsonl:3: not JSON ('),  # the file's own line: blank lines counted
    ('not json gz', 'a.jsonl.gz:3: not JSON ('),
    ('key on line 3', "a.jsonl:3: no data.text_key='text' (found ['content'])"),
    ('not utf-8', 'a.jsonl:2: not UTF-8 text (invalid start byte at byte 10 of the line)'),
    ('bad splits', "data.splits='validation': expected name=fraction or name=glob pairs"),
    ('two fractions', 'a held-out fraction in (0, 1) is one entry'),
    ('unknown split', "data split 'test': data.splits='validation=0.1' defines 'validation' "
                      "and 'train'"),
    ('glob matches nothing', "data.splits: train='nope*' matches none of the 1 files"),
    ('truncated zst', 'a.jsonl.zst: cannot be read ('),
    ('truncated gz', 'a.jsonl.gz: cannot be read ('),
    ('truncated parquet', 'b.parquet: cannot be read ('),
    ('not utf-8 gz', 'a.jsonl.gz: not UTF-8 text (invalid start byte at byte'),
])
def test_bad_input_is_one_line(tmp_path, case, message):
    root = tmp_path / 'c'
    os.makedirs(root)
    split, spec = 'train', 'train=*'
    if case == 'text key':
        _write(str(root / 'a.jsonl'), DOCS, key='content')
    elif case == 'parquet key':
        _write(str(root / 'b.parquet'), DOCS, key='body')
    elif case == 'not json':
        (root / 'a.jsonl').write_text('{"text": "ok"}\n\n{"text": oops}\n')
    elif case == 'key on line 3':
        (root / 'a.jsonl').write_text('{"text": "ok"}\n\n{"content": "no text"}\n')
    elif case == 'not utf-8':
        (root / 'a.jsonl').write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    elif case == 'not json gz':
        with gzip.open(root / 'a.jsonl.gz', 'wt') as f:
            f.write('{"text": "ok"}\n\n{"text": oops}\n')
    elif case.startswith('truncated'):  # a whole file, then its second half cut off
        name = {'zst': 'a.jsonl.zst', 'gz': 'a.jsonl.gz', 'parquet': 'b.parquet'}[case[10:]]
        _write(str(root / name), DOCS * 20)
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[:len(data) // 2])
    elif case == 'not utf-8 gz':
        with gzip.open(root / 'a.jsonl.gz', 'wb') as f:
            f.write(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    elif case != 'no files':
        _write(str(root / 'a.jsonl'), DOCS)
    spec = {'bad splits': 'validation', 'two fractions': 'validation=0.1,test=0.1',
            'unknown split': 'validation=0.1', 'glob matches nothing': 'train=nope*'}.get(case,
                                                                                     spec)
    split = 'test' if case == 'unknown split' else split
    with pytest.raises(ValueError) as e:
        docs = FileDocuments(str(root), split, 'text', spec, str(tmp_path / 'd'))
        docs.read(range(len(docs)))
    assert message in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_an_empty_shard_is_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / 'c'
    _write(str(root / 'a.jsonl'), DOCS)
    (root / 'b.jsonl').write_text('')
    docs = FileDocuments(str(root), 'train', 'text', 'train=*', str(tmp_path / 'd'))
    assert len(docs) == len(DOCS)
    assert any('b.jsonl has no records; skipped' in r.getMessage() for r in caplog.records)


def test_parse_splits_default():
    assert parse_splits('') == {'validation': 0.01}
    assert parse_splits('train=a/*.jsonl, validation=b.parquet') == {
        'train': 'a/*.jsonl', 'validation': 'b.parquet'}


def test_a_tokenizer_trains_on_a_files_source(tmp_path, capsys):
    """`jaxbig tokenizer train` reads the same records (the train split only)."""
    from jaxbig import cli
    from jaxbig.data.text import tokenizers

    _write(str(tmp_path / 'c' / 'a.jsonl.gz'), DOCS * 4)
    out = str(tmp_path / 'tok')
    assert cli.main(['tokenizer', 'train', '--config', 'experiments/lm.py:data=files',
                     '--vocab-size', '300', '--out', out, f'--config.data.path={tmp_path / "c"}',
                     f'--config.data.data_dir={tmp_path / "data"}']) == 0
    assert 'trained on files/train' in capsys.readouterr().out
    tok = tokenizers.from_config({'tokenizer': os.path.join(out, 'tokenizer.json')})
    assert tok.decode(tok.encode(DOCS[5])) == DOCS[5]
    assert len(tok.encode(DOCS[5])) < len(DOCS[5].encode('utf-8'))  # merges were learned


def test_text_classification_from_files(tmp_path):
    """experiments/finetune_text.py:data=FILE reads {text, label} records: classes are the
    labels found (sorted), the split holds out a fixed fraction, a run trains and evaluates
    on them; a record without its label is refused in one line naming it."""
    from conftest import metric_series, run_cli

    from jaxbig.config import ConfigError
    from jaxbig.data.pipelines import text_classes

    rng = np.random.default_rng(0)
    words = {'pos': 'good great fine nice', 'neg': 'bad awful poor sad'}
    path = tmp_path / 'reviews.jsonl'
    with open(path, 'w') as f:
        for i in range(200):
            label = ['neg', 'pos'][i % 2]
            text = ' '.join(rng.choice(words[label].split(), 6))
            f.write(json.dumps({'text': text, 'label': label}) + '\n')
    cfg = ml_collections.ConfigDict(dict(pipeline='text_classes', name='files', path=str(path),
                                         splits='validation=0.2', text_key='', label_key='',
                                         seq_len=48, tokenizer='bytes', eos_id=-1))
    by_split, classes = text_classes.file_labels(cfg)
    assert classes == ('neg', 'pos') and len(by_split['validation']) == 40
    pipe = text_classes.build_pipeline(cfg, split='validation', batch_size=16, seed=0,
                                       one_pass=True)
    batch = pipe.get_batch(0)
    for r in range(16):
        text = bytes(batch['inputs'][r][batch['mask'][r] > 0].tolist()).decode()
        assert classes[batch['label'][r]] == ('pos' if 'good' in text or 'great' in text
                                              or 'fine' in text or 'nice' in text else 'neg')
    workdir = str(tmp_path / 'ft')
    run_cli('train', '--config', f'experiments/finetune_text.py:data={path},steps=8,batch=16',
            '--workdir', workdir, '--config.data.splits=validation=0.2',
            '--config.model.backbone.num_layers=1', '--config.train.eval_every=8',
            '--config.train.log_every=4', '--config.train.checkpoint_every=8')
    assert metric_series(workdir, 'val/num_examples')[8] == 40
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({'text': 'x', 'label': 'a'}) + '\n' + json.dumps({'text': 'y'}))
    with pytest.raises(ConfigError, match="bad.jsonl:2: no data.label_key='label'"):
        text_classes.file_labels(ml_collections.ConfigDict(dict(cfg, path=str(bad))))


def test_text_classes_processes_read_only_their_rows(tmp_path, monkeypatch):
    """A labelled .jsonl.zst + Parquet source: once prepared (labels checked and saved, token
    caches built), a process holds the labels and reads its rows' tokens from the cache —
    no record is parsed again — and the two processes' host batches concatenate to the
    one-process batch, whose rows are the records' own bytes (cut to seq_len) and labels."""
    from jaxbig.data.pipelines import text_classes
    from jaxbig.data.text import documents, file_documents, record_labels

    rng = np.random.default_rng(3)
    records = [{'text': f'doc {i:02d} ' + 'x' * int(rng.integers(0, 30)), 'label': int(i % 3)}
               for i in range(60)]
    src = tmp_path / 'src'
    src.mkdir()
    with open(src / 'a.jsonl.zst', 'wb') as f:
        f.write(zstandard.ZstdCompressor().compress(
            ''.join(json.dumps(r) + '\n' for r in records[:25]).encode()))
    pq.write_table(pa.Table.from_pylist(records[25:]), src / 'b.parquet', row_group_size=10)
    cfg = ml_collections.ConfigDict(dict(
        pipeline='text_classes', name='files', path=str(src), splits='validation=0.2',
        text_key='', label_key='', seq_len=24, tokenizer='bytes', eos_id=-1,
        data_dir=str(tmp_path / 'data'), train_split='train', val_split='validation'))
    text_classes.prepare(cfg)
    cache_dir = FileDocuments(str(src), 'train', 'text', 'validation=0.2',
                              str(tmp_path / 'data')).cache_dir
    assert os.path.exists(os.path.join(cache_dir, record_labels.LABELS_FILE))
    record_labels._read_files.cache_clear()
    token_cache.load_corpus.cache_clear()

    def no_parsing(*args, **kwargs):
        raise AssertionError('the labels were read again')

    read, texts = [], file_documents._File.texts
    monkeypatch.setattr(record_labels, '_one_file', no_parsing)
    monkeypatch.setattr(file_documents._File, 'texts',
                        lambda self, rows: read.extend(rows) or texts(self, rows))
    one = text_classes.build_pipeline(cfg, split='train', batch_size=8, seed=5).get_batch(2)
    # opening a token cache re-reads its spot-check records (documents.SPOT_CHECKS); no more
    assert 0 < len(read) <= documents.SPOT_CHECKS, read
    read.clear()
    parts = [text_classes.build_pipeline(cfg, split='train', batch_size=8, seed=5,
                                         process_index=p, process_count=2).get_batch(2)
             for p in (0, 1)]
    assert read == []  # the same process: its caches open once
    for key in one:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), one[key])
    # each row is one training record's own text (cut to 24 bytes) and label
    train = [records[int(i)] for i in FileDocuments(str(src), 'train', 'text', 'validation=0.2',
                                                    str(tmp_path / 'data')).ids]
    for r in range(8):
        text = bytes(one['inputs'][r][one['mask'][r] > 0].tolist()).decode()
        match = [rec for rec in train if rec['text'][:24] == text]
        assert len(match) == 1 and one['label'][r] == match[0]['label'], text


def test_hf_save_to_disk_source(tmp_path):
    """data.name='hf_disk': a DatasetDict saved with save_to_disk gives its splits' reference
    streams (as the same text in JSONL does); a single Dataset is split by data.splits like
    JSONL records (the same held-out rows); a missing split / column is one line."""
    import datasets

    from jaxbig.data.pipelines import lm

    saved = tmp_path / 'saved'
    datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': DOCS[:15]}),
                          'validation': datasets.Dataset.from_dict({'text': DOCS[15:]})}
                         ).save_to_disk(str(saved))
    token_cache.load_corpus.cache_clear()
    for split, docs in (('train', DOCS[:15]), ('validation', DOCS[15:])):
        corpus = token_cache.load_corpus('hf_disk', split, str(tmp_path / 'data'), str(saved))
        np.testing.assert_array_equal(
            np.asarray(corpus.read(np.array([0]), corpus.num_tokens))[0], _stream(docs))
    single = tmp_path / 'single'
    datasets.Dataset.from_dict({'text': DOCS}).save_to_disk(str(single))
    _write(str(tmp_path / 'same' / 'all.jsonl'), DOCS)
    cfg = dict(defaults.lm_data('hf_disk', 16), path=str(single), splits='validation=0.2',
               data_dir=str(tmp_path / 'data'))
    for split in ('train', 'validation'):
        ours = lm.build_pipeline(ml_collections.ConfigDict(cfg), split=split, batch_size=4,
                                 seed=1).get_batch(1)
        theirs = lm.build_pipeline(ml_collections.ConfigDict(
            dict(cfg, name='files', path=str(tmp_path / 'same'))), split=split, batch_size=4,
            seed=1).get_batch(1)
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    with pytest.raises(ValueError, match="data split 'test'.*'train', 'validation'"):
        token_cache.load_corpus('hf_disk', 'test', str(tmp_path / 'data'), str(saved))
    with pytest.raises(ValueError, match="no data.text_key='body'"):
        token_cache.load_corpus('hf_disk', 'train', str(tmp_path / 'data'), str(saved), 'body')


def test_compressed_rows_are_streamed_not_held(tmp_path, monkeypatch):
    """A .jsonl.zst read in order chunk by chunk decompresses once and keeps no copy of the
    file's lines afterwards; rows read out of order reopen it."""
    import tracemalloc

    from jaxbig.data.text import file_documents

    rng = np.random.default_rng(0)  # hex digits: zstd packs them only 2:1
    docs = [rng.bytes(1000).hex() for _ in range(4000)]  # 8 MB of text in 4,000 records
    _write(str(tmp_path / 'c' / 'a.jsonl.zst'), docs)
    opened = []
    real = file_documents._open_text
    monkeypatch.setattr(file_documents, '_open_text', lambda p: opened.append(p) or real(p))
    files = FileDocuments(str(tmp_path / 'c'), 'train', 'text', 'train=*', str(tmp_path / 'd'))
    assert len(opened) == 1  # counting the records
    tracemalloc.start()
    same = all(files.read(range(start, start + 1000)) == [d.encode() for d in docs[start:][:1000]]
               for start in range(0, len(docs), 1000))
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert same and len(opened) == 2
    assert held < 4e6, held  # the file's lines would be > 8 MB (the stream's buffer: ~2 MB)
    assert files.read([5, 3]) == [docs[5].encode(), docs[3].encode()] and len(opened) == 3


def test_record_index_is_saved_with_the_token_cache_and_read_back(tmp_path, monkeypatch):
    """Once a token cache is built, the files' record counts (and plain JSONL line offsets)
    are kept beside it: the next opening counts nothing and reads the same records."""
    from jaxbig.data.text import file_documents, record_index

    root, data = tmp_path / 'c', str(tmp_path / 'd')
    for name, part in (('a.jsonl', DOCS[:9]), ('b.jsonl.zst', DOCS[9:16]),
                       ('c.parquet', DOCS[16:])):
        _write(str(root / name), part)
    token_cache.load_corpus.cache_clear()
    corpus = token_cache.load_corpus('files', 'train', data, str(root), splits='train=*')
    first = FileDocuments(str(root), 'train', 'text', 'train=*', data)
    assert os.listdir(first.cache_dir).count(record_index.RECORDS_FILE) == 1
    counted = []
    monkeypatch.setattr(file_documents, '_line_offsets', lambda p: counted.append(p))
    monkeypatch.setattr(file_documents, '_open_text', lambda p: counted.append(p))
    file_documents._files.cache_clear()
    again = FileDocuments(str(root), 'train', 'text', 'train=*', data)
    assert counted == [] and len(again) == len(DOCS)
    monkeypatch.undo()
    assert again.read(range(len(DOCS))) == [d.encode('utf-8') for d in DOCS]
    assert len(corpus.doc_ids) == len(DOCS)
