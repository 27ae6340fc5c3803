"""`audio_captions`: synthesised sound clips with compositional captions, as a TFDS dataset.

Each clip is one sound on a faint noise floor; its caption names the four factors that made
it, e.g. 'a bright low rising chirp in fast pulses':

    timbre    pure (sines) | bright (6 harmonics at 1/k; noise: a wide band, not a narrow one)
    register  low 160-320 Hz | mid 400-800 Hz | high 1000-2000 Hz   (base frequency f0,
              log-uniform in the range)
    kind      tone (f0) | chord (f0, 5/4 f0, 3/2 f0: a major triad) | rising chirp /
              falling chirp (one octave, f0 / sqrt 2 <-> f0 sqrt 2, exponential sweep) |
              noise burst (noise band-passed around f0: 1/6 octave wide, bright 1 octave)
    tempo     held steady (one sound, 20 ms fades) | in slow pulses (2.5 per second) |
              in fast pulses (7 per second); pulses are on half the period, random phase

2 x 3 x 5 x 3 = 90 distinct captions. Factors are drawn uniformly and independently; gain
(peak 0.3-0.8) and noise floor (std 0.001-0.004) vary per clip. Clip k of split s is a pure
function of (seed, s, k) (numpy only), so any count is reproducible: two builds write the
same bytes.

Features: `audio` int16 [samples] (PCM, full scale 32767, mono at `sample_rate` Hz),
`caption` Text, `label` ClassLabel of the 15 register-kind pairs ('low tone', ..., 'high
noise burst', in REGISTERS x KINDS order), and `timbre`, `register`, `kind`, `tempo`
ClassLabels. Splits `train` and `test`.

Count, duration, sample rate and seed come from the builder config; the default
'sr16000_ms1000_train4000_test1000_seed0' (5,000 clips of 1 s, 160 MB) prepares in well
under a minute. Prepare with `jaxbig.data.pipelines.audio_text.prepare(config)`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxbig.data.builders.pystdlib import _ClassProperty

TIMBRES = ('pure', 'bright')
REGISTERS = {'low': (160.0, 320.0), 'mid': (400.0, 800.0), 'high': (1000.0, 2000.0)}
KINDS = ('tone', 'chord', 'rising chirp', 'falling chirp', 'noise burst')
TEMPOS = {'held steady': 0.0, 'in slow pulses': 2.5, 'in fast pulses': 7.0}  # pulses / s
CLASS_NAMES = tuple(f'{r} {k}' for r in REGISTERS for k in KINDS)
CHORD = (1.0, 1.25, 1.5)
HARMONICS = 6
SPLIT_CODES = {'train': 0, 'test': 1}


def caption(timbre: str, register: str, kind: str, tempo: str) -> str:
    return f'a {timbre} {register} {kind} {tempo}'


def words() -> list[str]:
    """Every word a caption can contain, sorted (the caption tokenizer's vocabulary)."""
    out = {'a', *TIMBRES, *REGISTERS}
    for phrase in (*KINDS, *TEMPOS):
        out.update(phrase.split())
    return sorted(out)


def zero_shot_templates() -> list[str]:
    """Prompts with one '{}' for a class name ('low tone'): every timbre x tempo."""
    return [f'a {timbre} {{}} {tempo}' for timbre in TIMBRES for tempo in TEMPOS]


def oscillator(phase: np.ndarray, bright: bool, top_frequency: float, nyquist: float):
    """sin(phase) (pure) or sum_k sin(k phase) / k over the harmonics k = 1..6 below the
    Nyquist frequency (bright; top_frequency: the highest fundamental in the clip)."""
    if not bright:
        return np.sin(phase)
    ks = [k for k in range(1, HARMONICS + 1) if k * top_frequency < nyquist] or [1]
    return sum(np.sin(k * phase) / k for k in ks)


def band_noise(rng, n: int, sample_rate: int, centre: float, octaves: float):
    """White noise filtered by a Gaussian in log2 frequency (std `octaves` / 2) around
    `centre` Hz, unit RMS. float64 [n]."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    distance = np.log2(np.maximum(freqs, 1.0) / centre)
    y = np.fft.irfft(spectrum * np.exp(-0.5 * (distance / (octaves / 2)) ** 2), n)
    return y / np.sqrt(np.mean(y**2) + 1e-12)


def envelope(rng, n: int, sample_rate: int, rate: float):
    """Amplitude envelope float64 [n] in [0, 1]: steady (rate 0: on for 0.7-0.95 of the clip
    from a random start, 20 ms raised-cosine fades) or `rate` pulses per second, each on for
    half the period (random phase, 5 ms fades)."""
    t = np.arange(n) / sample_rate
    if rate == 0:
        length = rng.uniform(0.7, 0.95) * n / sample_rate
        start = rng.uniform(0, n / sample_rate - length)
        edge, fade = np.minimum(t - start, start + length - t), 0.02  # s inside the sound
    else:
        position = (t * rate + rng.uniform()) % 1.0  # within each period
        edge, fade = np.minimum(position, 0.5 - position) / rate, 0.005
    return np.where(edge <= 0, 0.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(edge / fade, 0, 1)))


def sound(rng, kind: str, bright: bool, f0: float, n: int, sample_rate: int):
    """One sound float64 [n] of `kind` at base frequency f0 (module docstring), peak ~1."""
    t = np.arange(n) / sample_rate
    duration, nyquist = n / sample_rate, sample_rate / 2
    if kind == 'noise burst':
        y = band_noise(rng, n, sample_rate, f0, 1.0 if bright else 1 / 6)
    elif kind in ('rising chirp', 'falling chirp'):
        sign = 1.0 if kind == 'rising chirp' else -1.0
        # f(t) = f0 * 2^(sign (t / D - 1/2)); phase = 2 pi * integral of f.
        scale = duration / (sign * np.log(2))
        phase = 2 * np.pi * f0 * scale * (2 ** (sign * (t / duration - 0.5)) - 2 ** (-0.5 * sign))
        y = oscillator(phase + rng.uniform(0, 2 * np.pi), bright, f0 * np.sqrt(2), nyquist)
    elif kind in ('tone', 'chord'):
        ratios = CHORD if kind == 'chord' else (1.0,)
        y = sum(oscillator(2 * np.pi * f0 * r * t + rng.uniform(0, 2 * np.pi), bright,
                           f0 * r, nyquist) for r in ratios)
    else:
        raise ValueError(f'unknown sound kind {kind!r}; expected one of {KINDS}')
    return y / np.max(np.abs(y))


def synthesise_example(seed: int, split: str, index: int, sample_rate: int,
                       num_samples: int) -> dict:
    """Clip `index` of `split`: audio int16 [num_samples], caption and factor indices."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    timbre, register, kind, tempo = (
        int(rng.integers(n)) for n in (len(TIMBRES), len(REGISTERS), len(KINDS), len(TEMPOS))
    )
    low, high = list(REGISTERS.values())[register]
    f0 = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    y = sound(rng, KINDS[kind], timbre == 1, f0, num_samples, sample_rate)
    y = y * envelope(rng, num_samples, sample_rate, list(TEMPOS.values())[tempo])
    y = rng.uniform(0.3, 0.8) * y + rng.uniform(0.001, 0.004) * rng.normal(size=num_samples)
    names = (TIMBRES[timbre], list(REGISTERS)[register], KINDS[kind], list(TEMPOS)[tempo])
    return {
        'audio': np.round(np.clip(y, -1, 1) * 32767).astype(np.int16),
        'caption': caption(*names),
        'label': register * len(KINDS) + kind,
        'timbre': timbre,
        'register': register,
        'kind': kind,
        'tempo': tempo,
    }


@dataclasses.dataclass
class AudioCaptionsConfig(tfds.core.BuilderConfig):
    sample_rate: int = 16000
    duration_ms: int = 1000
    num_train: int = 4000
    num_test: int = 1000
    seed: int = 0


def make_config(sample_rate=16000, duration_ms=1000, num_train=4000, num_test=1000,
                seed=0) -> AudioCaptionsConfig:
    name = f'sr{sample_rate}_ms{duration_ms}_train{num_train}_test{num_test}_seed{seed}'
    return AudioCaptionsConfig(name=name, sample_rate=sample_rate, duration_ms=duration_ms,
                               num_train=num_train, num_test=num_test, seed=seed)


def num_samples(cfg: AudioCaptionsConfig) -> int:
    return cfg.sample_rate * cfg.duration_ms // 1000


class AudioCaptions(tfds.core.GeneratorBasedBuilder):
    """Synthesised sounds with compositional captions; see the module docstring."""

    name = 'audio_captions'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS: ClassVar[list[AudioCaptionsConfig]] = [make_config()]
    pkg_dir_path = epath.Path(__file__).parent  # see pystdlib.py
    code_path = _ClassProperty(lambda cls: epath.Path(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        n = num_samples(self.builder_config)
        label = lambda names: tfds.features.ClassLabel(names=[x.replace(' ', '_') for x in names])
        return self.dataset_info_from_configs(
            description='Synthesised sound clips with compositional captions.',
            features=tfds.features.FeaturesDict(
                {
                    'audio': tfds.features.Tensor(shape=(n,), dtype=np.int16),
                    'caption': tfds.features.Text(),
                    'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    'timbre': label(TIMBRES),
                    'register': label(REGISTERS),
                    'kind': label(KINDS),
                    'tempo': label(TEMPOS),
                }
            ),
            homepage='https://github.com/',
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        counts = {'train': cfg.num_train, 'test': cfg.num_test}
        return {s: self._generate_examples(s, n) for s, n in counts.items()}

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        for k in range(count):
            yield k, synthesise_example(cfg.seed, split, k, cfg.sample_rate, num_samples(cfg))
