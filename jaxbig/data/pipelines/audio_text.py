"""Audio-caption pairs for contrastive audio-text training (CLAP with the CLIP / SigLIP losses).

`config.pipeline = 'audio_text'`. Batches (b = batch_size // process_count host rows):

    audio  float32 [b, samples] in [-1, 1]  mono waveform at data.sample_rate Hz
    text   int32 [b, max_len]               caption tokens, eos then pad
    label  int32 [b]                        class id (when data.label_key is set; zero-shot)

Sources (`data.name`):
  'audio_captions'  the embedded TFDS builder (`jaxbig.data.builders.audio_captions`), prepared into
                    data.data_dir on first use; sample_rate, duration_ms, num_train, num_test
                    and audio_seed pick its builder config.
  'folder'          your own WAV files: data.path is a folder holding one captions file per
                    split, `<split>.tsv` (train.tsv, test.tsv), with one clip per line:
                        clips/dog.wav<TAB>a dog barks twice
                    (the WAV path relative to the folder; blank lines and lines starting
                    with '#' are skipped). WAVs are read with the standard library's `wave`
                    (PCM 8/16/24/32-bit, any channel count, averaged to mono); their sample
                    rate must equal data.sample_rate (resample beforehand). Every clip is cut
                    or zero-padded at the end to duration_ms. No labels: retrieval only.

Global batch i holds stream positions i*B .. i*B+B-1 of endless seeded-shuffle epochs
(`image_sources.IndexOrder`), so it is a pure function of (seed, i); `one_pass=True`
(evaluators) visits each clip once and adds `example_mask` (`jaxbig.data.one_pass`).

Other data config keys: audio_key, text_key, label_key ('' = none), tokenizer ('words': the
audio_captions vocabulary | 'bytes': UTF-8 bytes, for free-form captions), max_len,
train_split, val_split.
"""

from __future__ import annotations

import functools
import os
import wave

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxbig.config import ConfigError
from jaxbig.data import image_sources
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.builders import audio_captions
from jaxbig.data.text import captions
from jaxbig.data.text.documents import resolve_data_dir

SOURCES = ('audio_captions', 'folder')
CONFIG_KEYS = ('name', 'data_dir', 'path', 'sample_rate', 'duration_ms', 'num_train',
               'num_test', 'audio_seed')


def _builder(config) -> audio_captions.AudioCaptions:
    cfg = audio_captions.make_config(
        sample_rate=config.get('sample_rate', 16000),
        duration_ms=config.get('duration_ms', 1000),
        num_train=config.get('num_train', 4000),
        num_test=config.get('num_test', 1000),
        seed=config.get('audio_seed', 0),
    )
    known = {c.name for c in audio_captions.AudioCaptions.BUILDER_CONFIGS}
    return audio_captions.AudioCaptions(config=cfg.name if cfg.name in known else cfg,
                                        data_dir=resolve_data_dir(config.get('data_dir', '')))


def _check_name(config) -> None:
    if config.name not in SOURCES:
        raise ConfigError(f'data.name={config.name!r}: the audio_text pipeline reads one of '
                          f'{list(SOURCES)}')


def prepare(config) -> None:
    """Idempotent: builds the embedded audio_captions if needed; checks a folder's
    training captions file exists."""
    _check_name(config)
    if config.name == 'folder':
        captions_file(config.get('path', ''), config.get('train_split', 'train'))
        return
    b = _builder(config)
    if not b.is_prepared():
        b.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )


# ----------------------------------------------------------------------------- WAV folders


def captions_file(path: str, split: str) -> str:
    """`path`/`split`.tsv, or a ConfigError saying what is missing."""
    if not path or not os.path.isdir(path):
        raise ConfigError(f'data.path={path!r}: not a folder (data.name=folder needs a folder '
                          f'of WAV files with {split}.tsv captions)')
    file = os.path.join(path, f'{split}.tsv')
    if not os.path.isfile(file):
        raise ConfigError(f'data.path={path!r}: no captions file {split}.tsv for split '
                          f"{split!r} (one 'file.wav<TAB>caption' line per clip)")
    return file


def read_captions(file: str) -> list[tuple[str, str]]:
    """[(wav path relative to the file's folder, caption)] from a `file.wav<TAB>caption` file."""
    rows = []
    with open(file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\n').rstrip('\r')
            if not line.strip() or line.startswith('#'):
                continue
            wav, sep, text = line.partition('\t')
            if not sep or not wav.strip() or not text.strip():
                raise ValueError(f"{file}:{number}: expected 'file.wav<TAB>caption', got {line!r}")
            rows.append((wav.strip(), text.strip()))
    if not rows:
        raise ValueError(f'{file}: no clips listed')
    return rows


def read_wav(file: str, sample_rate: int) -> np.ndarray:
    """A PCM WAV file -> float32 [samples] mono in [-1, 1] (channels averaged)."""
    with wave.open(file, 'rb') as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if rate != sample_rate:
        raise ValueError(f'{file}: sample rate {rate} Hz, expected data.sample_rate='
                         f'{sample_rate} (resample the file first)')
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit little-endian two's complement
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int64)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 2**23, v - 2**24, v) / 2.0**23
    elif width in (2, 4):
        x = np.frombuffer(raw, f'<i{width}').astype(np.float64) / 2.0 ** (8 * width - 1)
    else:
        raise ValueError(f'{file}: {8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM')
    return np.asarray(x, np.float32).reshape(-1, channels).mean(axis=1)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """[s] -> [n]: cut at the end, or zero-padded at the end."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


class FolderSplit:
    """The clips of `path`/`split`.tsv in memory, with `image_sources.Split`'s interface:
    read(ids) -> {'audio': float32 [n, samples], 'caption': object [n]}."""

    info = None  # no TFDS metadata (no class names)

    def __init__(self, path: str, split: str, keys: tuple[str, ...], sample_rate: int,
                 num_samples: int):
        missing = sorted(set(keys) - {'audio', 'caption'})
        if missing:
            raise ConfigError(f"data keys {missing}: a WAV folder has only 'audio' and 'caption' "
                              "(set data.audio_key='audio', text_key='caption', label_key='')")
        rows = read_captions(captions_file(path, split))
        self._columns = {
            'audio': np.stack([fit_length(read_wav(os.path.join(path, w), sample_rate),
                                          num_samples) for w, _ in rows]),
            'caption': np.array([t for _, t in rows], object),
        }

    def __len__(self) -> int:
        return len(self._columns['caption'])

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[ids] for k, v in self._columns.items()}


# ----------------------------------------------------------------------------- the pipeline


@functools.lru_cache(maxsize=8)
def _load_split(config_key: tuple, split: str, keys: tuple[str, ...]):
    config = ml_collections.ConfigDict(dict(config_key))
    if config.name == 'folder':
        samples = config.get('sample_rate', 16000) * config.get('duration_ms', 1000) // 1000
        return FolderSplit(config.get('path', ''), split, keys, config.get('sample_rate', 16000),
                           samples)
    b = _builder(config)
    if not b.is_prepared():
        raise ValueError(f'data.name={config.name!r}: not prepared in data_dir {b.data_dir!r}; '
                         'call jaxbig.data.prepare(config) first')
    if split not in b.info.splits:
        raise ValueError(f'data split {split!r} not available for {config.name!r} '
                         f'(splits: {sorted(b.info.splits)})')
    return image_sources.Split(b.as_data_source(split=split), b.info, keys)


def load_split(config, split: str, keys: tuple[str, ...]):
    """`split` of the source named by `config` (cached in-process)."""
    _check_name(config)
    key = tuple((k, config[k]) for k in CONFIG_KEYS if k in config)
    return _load_split(key, split, tuple(keys))


def get_tokenizer(name: str):
    """'words': the audio_captions vocabulary (ids as `captions.WordTokenizer`) | 'bytes'."""
    if name == 'words':
        return captions.WordTokenizer(audio_captions.words())
    return captions.get_tokenizer(name)


def to_float(audio: np.ndarray) -> np.ndarray:
    """int16 PCM (as stored by audio_captions) or float samples -> float32 in [-1, 1]."""
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32)


class AudioTextPipeline:
    """See the module docstring. get_batch(i) -> dict(audio, text[, label])."""

    def __init__(self, config, *, split, batch_size, seed, process_index=0, process_count=1,
                 one_pass=False, num_examples=0):
        self.audio_key = config.get('audio_key', 'audio')
        self.text_key = config.get('text_key', 'caption')
        self.label_key = config.get('label_key', 'label')
        keys = (self.audio_key, self.text_key) + ((self.label_key,) if self.label_key else ())
        self.split = load_split(config, split, keys)
        self.tokenizer = get_tokenizer(config.get('tokenizer', 'words'))
        self.max_len = config.get('max_len', 10)
        self.rows = image_sources.ExampleRows(
            len(self.split), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        self.order = self.rows.order
        one_pass_lib.attach(self, self.rows.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        _, ids, example_mask = self.rows.batch(i)
        columns = self.split.read(ids)
        out = {
            'audio': to_float(columns[self.audio_key]),
            'text': self.tokenizer.encode_batch(list(columns[self.text_key]), self.max_len),
        }
        if self.label_key:
            out['label'] = columns[self.label_key].astype(np.int32)
        return one_pass_lib.with_mask(out, example_mask)


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    return AudioTextPipeline(config, split=split, batch_size=batch_size, seed=seed,
                             process_index=process_index, process_count=process_count,
                             one_pass=one_pass, num_examples=num_examples)
