"""Audio-text (CLAP) pieces, no download and no audio library:

* the log-mel front end (jaxbig.models.audio) against scipy.signal.stft and a mel filterbank
  built here with np.interp, to 1e-4 in log units; standardisation and padding against
  NumPy; the audio tower's shapes and errors;
* the embedded `audio_captions` builder: two builds write the same bytes, and each clip
  sounds as its caption says (pitch register, chirp direction, pulse count, chord);
* the audio_text pipeline: batches, determinism, and a folder of WAV files written with the
  standard library's `wave` (8/16/24-bit, stereo, cut and padded) read back exactly;
  error paths (missing captions file, wrong sample rate, malformed line, bad keys);
* end to end through the CLI: a short CLAP run on 2 devices whose loss falls (default
  suite); slow: a run on a WAV folder, and the experiment's default CLIP and SigLIP runs
  reach >= 3x chance zero-shot accuracy and audio->text R@1.
"""
import json
import os
import wave

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.signal
from conftest import metric_series, run_cli

from jaxbig import cli, data, models
from jaxbig.config import ConfigError
from jaxbig.data.builders import audio_captions
from jaxbig.data.pipelines import audio_text
from jaxbig.models import audio

CLAP = 'experiments/clap.py'
SMALL = dict(num_train=256, num_test=64)
SMALL_ARGS = ['--config.data.num_train=256', '--config.data.num_test=64']
TINY = ['--config.model.image.backbone.depth=1', '--config.model.text.depth=1',
        '--config.train.log_every=1', '--config.train.eval_every=0',
        '--config.evals.retrieval.max_examples=64', '--config.evals.zero_shot.max_examples=64']


@pytest.fixture(scope='module')
def audio_dir(tmp_path_factory):
    """TFDS data dir with a small audio_captions prepared (TFDS_DATA_DIR for the CLI)."""
    path = str(tmp_path_factory.mktemp('tfds_audio'))
    data.prepare(ml_collections.ConfigDict(dict(pipeline='audio_text', name='audio_captions',
                                                data_dir=path, **SMALL)))
    old = os.environ.get('TFDS_DATA_DIR')
    os.environ['TFDS_DATA_DIR'] = path
    yield path
    if old is None:
        os.environ.pop('TFDS_DATA_DIR', None)
    else:
        os.environ['TFDS_DATA_DIR'] = old


# ----------------------------------------------------------------------------- front end


def reference_mel_bank(n_fft, sr, n_mels, fmin, fmax):
    """HTK triangles, written independently: each filter interpolated over its 3 edges."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    return np.stack([np.interp(freqs, edges[m:m + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
                     for m in range(n_mels)], axis=1)


def reference_log_mel(x, sr, n_fft, hop, n_mels, fmin, fmax, floor):
    """float64 [B, S] -> [B, T, n_mels] with scipy's STFT (periodic Hann, no padding)."""
    _, _, z = scipy.signal.stft(x, fs=sr, window='hann', nperseg=n_fft, noverlap=n_fft - hop,
                                boundary=None, padded=False, detrend=False,
                                scaling='spectrum')  # z = rfft(w x) / sum(w), sum(w) = n / 2
    power = np.abs(2.0 * z) ** 2  # = |rfft(w x)|^2 / (n / 4)^2
    mel = np.einsum('bft,fm->btm', power, reference_mel_bank(n_fft, sr, n_mels, fmin, fmax))
    return np.log(np.maximum(mel, floor))


def sample_signals(samples=16000, sr=16000):
    """Clips of the dataset, a full-scale sine and square wave, noise, silence: float32."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / sr
    clips = [audio_captions.synthesise_example(0, 'train', k, sr, samples)['audio'] / 32768.0
             for k in range(6)]
    others = [np.sin(2 * np.pi * 1000 * t), np.sign(np.sin(2 * np.pi * 310 * t)),
              np.clip(0.3 * rng.normal(size=samples), -1, 1), np.zeros(samples),
              0.8 * np.sin(2 * np.pi * 200 * t) * (t < 0.4) + 0.002 * rng.normal(size=samples)]
    return np.stack(clips + others).astype(np.float32)


@pytest.mark.parametrize('params', [
    dict(sample_rate=16000, n_fft=512, hop=256, n_mels=64, fmin=0.0, fmax=0.0),
    dict(sample_rate=16000, n_fft=400, hop=160, n_mels=40, fmin=50.0, fmax=7000.0),
])
def test_log_mel_matches_scipy_stft_and_numpy_mel_bank(params):
    x = sample_signals()
    out = np.asarray(jax.jit(lambda w: audio.log_mel_spectrogram(w, **params))(x))
    sr, n_fft, hop = params['sample_rate'], params['n_fft'], params['hop']
    ref = reference_log_mel(x.astype(np.float64), sr, n_fft, hop, params['n_mels'],
                            params['fmin'], params['fmax'] or sr / 2, 1e-6)
    assert out.shape == (len(x), 1 + (16000 - n_fft) // hop, params['n_mels']) == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    assert np.all(out[-2] == np.float32(np.log(1e-6)))  # silence sits on the floor
    bank = audio.mel_filterbank(n_fft, sr, params['n_mels'], params['fmin'], params['fmax'])
    np.testing.assert_allclose(bank, reference_mel_bank(n_fft, sr, params['n_mels'],
                               params['fmin'], params['fmax'] or sr / 2), atol=1e-6)


def test_full_scale_sine_on_a_bin_has_power_one():
    n_fft, sr = 512, 16000
    t = np.arange(4096) / sr
    power = np.asarray(audio.power_spectrogram(np.sin(2 * np.pi * 40 * sr / n_fft * t)[None],
                                               n_fft, 256))
    np.testing.assert_allclose(power[0, :, 40], 1.0, rtol=1e-5)


def test_standardise_and_pad_match_numpy():
    x = np.random.default_rng(1).normal(3.0, 2.0, (3, 61, 64)).astype(np.float32)
    mean, std = x.mean((1, 2), keepdims=True), x.std((1, 2), keepdims=True)
    np.testing.assert_allclose(audio.standardise(jnp.asarray(x)), (x - mean) / std, atol=1e-4)
    padded = np.asarray(audio.pad_to_multiple(jnp.asarray(x), 8))
    assert padded.shape == (3, 64, 64)
    np.testing.assert_array_equal(padded[:, :61], x)
    assert not padded[:, 61:].any()


@pytest.mark.parametrize('backbone,dim', [
    (dict(name='vit', patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, pool='mean'), 16),
    (dict(name='resnet', variant='cnn', width=4, cnn_layers=2, norm_groups=2), 8),
])
def test_audio_tower_features(backbone, dim):
    model = models.get_model('audio', backbone=backbone)
    x = sample_signals()[:2]
    params = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.jit(model.apply)(params, x).shape == (2, dim)
    image = jax.eval_shape(lambda p: model.apply(p, x, method='spectrogram_image'), params)
    assert image.shape == ((2, 64, 64, 1) if backbone['name'] == 'vit' else (2, 61, 64, 1))


def test_audio_tower_errors():
    model = models.get_model('audio')
    with pytest.raises(ValueError, match=r'expected \[batch, samples\]'):
        model.init(jax.random.key(0), np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match='shorter than one frame'):
        model.init(jax.random.key(0), np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match='fmax=9000'):
        audio.mel_filterbank(512, 16000, 64, 0.0, 9000.0)


# ----------------------------------------------------------------------------- the builder


def test_builder_writes_the_same_bytes_twice(tmp_path):
    small = dict(pipeline='audio_text', name='audio_captions', num_train=24, num_test=8,
                 duration_ms=250)
    dirs = [tmp_path / 'a', tmp_path / 'b']
    for d in dirs:
        data.prepare(ml_collections.ConfigDict(dict(small, data_dir=str(d))))
    files = lambda d: sorted(p.relative_to(d) for p in d.rglob('*.array_record*'))
    assert len(files(dirs[0])) >= 2 and files(dirs[0]) == files(dirs[1])
    for f in files(dirs[0]):
        assert (dirs[0] / f).read_bytes() == (dirs[1] / f).read_bytes(), f
    split = audio_text.load_split(ml_collections.ConfigDict(dict(small, data_dir=str(dirs[0]))),
                                  'test', ('audio', 'caption', 'label'))
    rows = split.read(np.arange(8))
    for k in range(8):
        ex = audio_captions.synthesise_example(0, 'test', k, 16000, 4000)
        np.testing.assert_array_equal(rows['audio'][k], ex['audio'])
        assert rows['caption'][k] == ex['caption'] and rows['label'][k] == ex['label']


def dominant_hz(x, sr=16000):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


def test_clips_sound_as_their_captions_say():
    """Searches seeds for clips of given factors; checks pitch, sweep, pulses and chord."""
    sr, n = 16000, 16000
    found = {}
    for k in range(400):
        ex = audio_captions.synthesise_example(0, 'train', k, sr, n)
        found.setdefault(ex['caption'], ex)
    checked = 0
    for cap, ex in found.items():
        timbre, register, kind, tempo = (audio_captions.TIMBRES[ex['timbre']],
                                         list(audio_captions.REGISTERS)[ex['register']],
                                         audio_captions.KINDS[ex['kind']],
                                         list(audio_captions.TEMPOS)[ex['tempo']])
        assert cap == f'a {timbre} {register} {kind} {tempo}'
        assert ex['label'] == audio_captions.CLASS_NAMES.index(f'{register} {kind}')
        x = ex['audio'] / 32768.0
        low, high = audio_captions.REGISTERS[register]
        if kind == 'tone' and timbre == 'pure' and tempo == 'held steady':
            assert low * 0.98 <= dominant_hz(x) <= high * 1.02, (cap, dominant_hz(x))
            checked += 1
        if kind.endswith('chirp') and timbre == 'pure' and tempo == 'held steady':
            active = np.flatnonzero(np.abs(x) > 0.05)
            a, b = active[0], active[-1]
            q = (b - a) // 4
            first, last = dominant_hz(x[a:a + q]), dominant_hz(x[b - q:b])
            assert (last > 1.2 * first) if kind == 'rising chirp' else (first > 1.2 * last), cap
            checked += 1
        if tempo != 'held steady' and timbre == 'pure' and kind == 'tone':
            loud = np.convolve(np.abs(x) > 0.1, np.ones(80) / 80, 'same') > 0.5
            onsets = np.count_nonzero(np.diff(loud.astype(int)) == 1) + int(loud[0])
            rate = audio_captions.TEMPOS[tempo]
            assert abs(onsets - rate) <= 1.5, (cap, onsets)
            checked += 1
        if kind == 'chord' and timbre == 'pure' and tempo == 'held steady':
            spectrum = np.abs(np.fft.rfft(x))
            peaks = scipy.signal.find_peaks(spectrum, height=spectrum.max() * 0.3, distance=20)[0]
            assert len(peaks) == 3, (cap, peaks)
            np.testing.assert_allclose(peaks / peaks[0], audio_captions.CHORD, rtol=0.02)
            checked += 1
    assert checked >= 10, checked


# ----------------------------------------------------------------------------- the pipeline


def embedded_config(audio_dir, **overrides):
    return ml_collections.ConfigDict(dict(pipeline='audio_text', name='audio_captions',
                                          data_dir=audio_dir, **SMALL, **overrides))


def test_pipeline_batches_are_pure_and_decode_to_captions(audio_dir):
    cfg = embedded_config(audio_dir)
    pipe = data.build_pipeline(cfg, split='train', batch_size=8, seed=3)
    batch = pipe.get_batch(5)
    assert batch['audio'].shape == (8, 16000) and batch['audio'].dtype == np.float32
    assert np.abs(batch['audio']).max() <= 1.0 and batch['text'].shape == (8, 10)
    again = data.build_pipeline(cfg, split='train', batch_size=8, seed=3).get_batch(5)
    for k in batch:
        np.testing.assert_array_equal(batch[k], again[k])
    halves = [data.build_pipeline(cfg, split='train', batch_size=8, seed=3, process_index=p,
                                  process_count=2).get_batch(5) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h['audio'] for h in halves]), batch['audio'])
    ids = pipe.order.ids(np.arange(40, 48))
    for row, k in enumerate(ids):
        ex = audio_captions.synthesise_example(0, 'train', int(k), 16000, 16000)
        np.testing.assert_array_equal(batch['audio'][row], ex['audio'] / 32768.0)
        assert pipe.tokenizer.decode(batch['text'][row]) == ex['caption']
        assert batch['label'][row] == ex['label']


def write_wav(path, samples: np.ndarray, sr: int, width: int):
    """samples int [n] or [n, channels] at `width` bytes -> a PCM WAV file."""
    samples = samples.reshape(len(samples), -1)
    if width == 1:
        raw = (samples + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = samples.astype('<i4').reshape(-1)
        raw = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
    else:
        raw = samples.astype(f'<i{width}').tobytes()
    with wave.open(str(path), 'wb') as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(raw)


@pytest.fixture
def wav_folder(tmp_path):
    """train.tsv (5 clips: 16-bit, 8-bit, 24-bit stereo, short, long) and test.tsv (2)."""
    rng = np.random.default_rng(0)
    (tmp_path / 'clips').mkdir()
    clips = {
        'clips/a.wav': (rng.integers(-32768, 32767, 4000), 2, 32768.0),
        'clips/b.wav': (rng.integers(-128, 127, 4000), 1, 128.0),
        'clips/c.wav': (rng.integers(-2**23, 2**23 - 1, (4000, 2)), 3, 2.0**23),
        'd.wav': (rng.integers(-32768, 32767, 1000), 2, 32768.0),  # short: padded
        'e.wav': (rng.integers(-32768, 32767, 9000), 2, 32768.0),  # long: cut
    }
    expected = {}
    for name, (x, width, scale) in clips.items():
        write_wav(tmp_path / name, x, 16000, width)
        mono = x.reshape(len(x), -1).mean(1) / scale
        expected[name] = np.pad(mono, (0, max(0, 4000 - len(mono))))[:4000]
    captions = {name: f'clip {name} makes a sound' for name in clips}
    lines = ['# my clips', *(f'{n}\t{c}' for n, c in captions.items()), '']
    (tmp_path / 'train.tsv').write_text('\n'.join(lines))
    (tmp_path / 'test.tsv').write_text('clips/a.wav\tthe first\nd.wav\tthe short one\n')
    return tmp_path, expected, captions


def folder_config(path, **overrides):
    base = dict(pipeline='audio_text', name='folder', path=str(path), sample_rate=16000,
                duration_ms=250, label_key='', tokenizer='bytes', max_len=64)
    return ml_collections.ConfigDict({**base, **overrides})


def test_wav_folder_reads_back_what_was_written(wav_folder):
    path, expected, captions = wav_folder
    cfg = folder_config(path)
    data.prepare(cfg)
    pipe = data.build_pipeline(cfg, split='train', batch_size=5, seed=0)
    batch = pipe.get_batch(0)
    names = list(expected)
    assert batch['audio'].shape == (5, 4000) and set(batch) == {'audio', 'text'}
    for row, k in enumerate(pipe.order.ids(np.arange(5))):
        np.testing.assert_allclose(batch['audio'][row], expected[names[k]], rtol=0, atol=1e-6)
        assert pipe.tokenizer.decode(batch['text'][row]) == captions[names[k]]
    assert len(data.build_pipeline(cfg, split='test', batch_size=1, seed=0).split) == 2


def test_wav_folder_errors(wav_folder, tmp_path_factory):
    path, _, _ = wav_folder
    empty = tmp_path_factory.mktemp('empty')
    with pytest.raises(ConfigError, match=r'no captions file train\.tsv'):
        data.prepare(folder_config(empty))
    with pytest.raises(ConfigError, match='not a folder'):
        data.prepare(folder_config(empty / 'missing'))
    with pytest.raises(ConfigError, match='no captions file validation.tsv'):
        data.build_pipeline(folder_config(path), split='validation', batch_size=1, seed=0)
    with pytest.raises(ValueError, match=r'sample rate 16000 Hz, expected data\.sample_rate=22050'):
        data.build_pipeline(folder_config(path, sample_rate=22050), split='train', batch_size=1,
                            seed=0)
    with pytest.raises(ConfigError, match="a WAV folder has only 'audio' and 'caption'"):
        data.build_pipeline(folder_config(path, label_key='label'), split='train',
                            batch_size=1, seed=0)
    (path / 'train.tsv').write_text('clips/a.wav\tfine\nclips/b.wav no tab here\n')
    with pytest.raises(ValueError, match=r'train\.tsv:2: expected'):
        data.build_pipeline(folder_config(path), split='train', batch_size=1, seed=0)
    with pytest.raises(ConfigError, match="data.name='nope'"):
        data.prepare(folder_config(path, name='nope'))


def test_clap_config_errors_are_one_line(capsys, tmp_path):
    for arg, message in (('loss=hinge', 'loss='), ('audio=rnn', 'audio='),
                         ('data=mp3s', 'data='), ('data=folder,path=/no/such/dir', 'not a folder')):
        code = cli.main(['train', '--config', f'{CLAP}:{arg}', '--workdir', str(tmp_path / arg)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith('jaxbig: error:') and message in err, (arg, err)
        assert '\n' not in err


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # a CLI training run; the audio tower and data tests stay default
def test_short_clap_run_loss_falls(audio_dir, tmp_path):
    """30 CLIP steps on 2 devices: the loss falls below log(batch), the loss of embeddings
    that cannot tell the pairs apart; both evaluators report."""
    run_cli('train', '--workdir', str(tmp_path), '--config',
            f'{CLAP}:loss=clip,width=32,embed=32,steps=30,batch=32,lr=3e-3', *SMALL_ARGS, *TINY,
            devices=2)  # the audio batch [32, 16000] split over 2 devices
    loss = metric_series(tmp_path, 'train/loss')
    assert sorted(loss) == list(range(1, 31))
    first, last = np.mean([loss[s] for s in (1, 2, 3)]), np.mean([loss[s] for s in (28, 29, 30)])
    assert last < first - 0.3 and last < np.log(32) - 0.2, (first, last)
    with open(tmp_path / 'metrics.jsonl') as f:
        final = {k: v for line in f for k, v in json.loads(line).items()}
    assert 0 <= final['zero_shot/accuracy'] <= 1 and final['zero_shot/chance'] == 1 / 15
    assert 'retrieval/i2t_r1' in final and 'retrieval/t2i_r10' in final


@pytest.mark.slow
def test_clap_on_a_wav_folder(wav_folder, tmp_path):
    """data=folder end to end: byte-tokenised captions, retrieval only (no labels)."""
    path, _, _ = wav_folder
    work = tmp_path / 'run'
    run_cli('train', '--workdir', str(work), '--config',
            f'{CLAP}:data=folder,path={path},width=16,embed=16,steps=2,batch=2',
            '--config.data.duration_ms=250', *TINY[:4])
    with open(work / 'metrics.jsonl') as f:
        final = {k: v for line in f for k, v in json.loads(line).items()}
    assert sorted(metric_series(work, 'train/loss')) == [1, 2]
    assert final['retrieval/i2t_chance_r1'] == 0.5 and not any('zero_shot' in k for k in final)


@pytest.mark.slow
@pytest.mark.parametrize('loss', ['clip', 'siglip'])
def test_clap_defaults_beat_chance(audio_dir, tmp_path, loss):
    """The experiment's default run (its docstring's figures; prepares the default 4,000 /
    1,000 clips): >= 3x chance zero-shot accuracy and audio->text R@1."""
    run_cli('train', '--workdir', str(tmp_path), '--config', f'{CLAP}:loss={loss}', timeout=1800)
    with open(tmp_path / 'metrics.jsonl') as f:
        row = {k: v for line in f for k, v in json.loads(line).items()}
    print({k: v for k, v in row.items() if k.startswith(('zero_shot', 'retrieval'))})
    assert row['zero_shot/accuracy'] >= 3 * row['zero_shot/chance']
    assert row['retrieval/i2t_r1'] >= 3 * row['retrieval/i2t_chance_r1']
