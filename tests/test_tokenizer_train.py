"""`jaxbig tokenizer train`: byte-level BPE and SentencePiece on a config's training split,
read back as data.tokenizer, the model's vocabulary following it, bits per byte reported."""
import os
import shutil

import numpy as np
import pytest

from jaxbig import cli, train
from jaxbig.data.text import tokenizers

STDLIB = os.path.dirname(os.__file__)
FILES = ('os.py', 'argparse.py', 'shutil.py', 'functools.py', 'textwrap.py', 'json/decoder.py')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """A folder dataset: a few stdlib files in train/ and validation/."""
    root = tmp_path_factory.mktemp('corpus')
    for split, names in (('train', FILES[:5]), ('validation', FILES[5:])):
        os.makedirs(root / split)
        for name in names:
            shutil.copy(os.path.join(STDLIB, name), root / split / name.replace('/', '_'))
    return str(root)


def _folder(corpus):
    return ['--config.data.name=folder', f'--config.data.path={corpus}']


SAMPLE = open(os.path.join(STDLIB, 'textwrap.py'), encoding='utf-8').read()[:4000]


@pytest.mark.parametrize('kind, file, eos', [('bpe', 'tokenizer.json', 0),
                                             ('sentencepiece', 'tokenizer.model', 2)])
def test_train_round_trips_source_and_counts_bytes(corpus, tmp_path, capsys, kind, file, eos):
    out = str(tmp_path / kind)
    assert cli.main(['tokenizer', 'train', '--config', 'experiments/lm.py', '--vocab-size',
                     '600', '--out', out, '--kind', kind, *_folder(corpus)]) == 0
    assert f'-> {os.path.join(out, file)}' in capsys.readouterr().out
    tok = tokenizers.from_config({'tokenizer': os.path.join(out, file)})
    assert tok.vocab_size == 600 and tok.eos_id == eos
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE  # indentation and newlines survive
    assert len(ids) < len(SAMPLE.encode()) / 1.5  # it compresses
    assert tok.token_bytes()[ids].sum() == len(SAMPLE.encode('utf-8'))


def test_lm_trains_on_the_tokenizer_and_reports_bits_per_byte(corpus, tmp_path):
    out = str(tmp_path / 'tok')
    assert cli.main(['tokenizer', 'train', '--config', 'experiments/lm.py', '--vocab-size',
                     '500', '--out', out, *_folder(corpus)]) == 0
    path = os.path.join(out, 'tokenizer.json')
    config = cli.load_config('experiments/lm.py:steps=4,seq=32,batch=8', [
        *_folder(corpus), f'--config.data.tokenizer={path}', '--config.model.num_layers=1',
        '--config.train.log_every=1', '--config.train.eval_every=0',
        '--config.evals.val.num_examples=8'])
    assert config.model.vocab_size == 500  # 'auto': follows the tokenizer
    from jaxbig import data

    batch = data.build_pipeline(config.data, split='train', batch_size=8, seed=0).get_batch(0)
    assert batch['inputs'].max() < 500 and batch['inputs'].max() >= 256
    last = train.train(config, str(tmp_path / 'run'))
    assert np.isfinite(last['val/loss']) and 0 < last['val/bits_per_byte'] < last['val/loss']


@pytest.mark.parametrize('argv, message', [
    (['--vocab-size', '10'], '--vocab-size 10: expected 300'),
    (['--vocab-size', '600', '--config.data.name=folder', '--config.data.path=/nonexistent'],
     'data.path'),
    (['--vocab-size', '300', '--kind', 'sentencepiece'],  # 256 byte pieces + the characters
     '--kind sentencepiece --vocab-size 300: Vocabulary size is smaller than required_chars'),
])
def test_bad_input_is_one_line(corpus, tmp_path, capsys, argv, message):
    out = tmp_path / 'tok'
    assert cli.main(['tokenizer', 'train', '--config', 'experiments/lm.py', '--out', str(out),
                     *_folder(corpus), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and '\n' not in err
    assert not out.exists()


def test_non_lm_data_is_refused(tmp_path, capsys):
    assert cli.main(['tokenizer', 'train', '--config', 'experiments/simclr.py',
                     '--vocab-size', '600', '--out', str(tmp_path / 't')]) == 2
    assert "tokenizer training reads an LM data section" in capsys.readouterr().err
