"""Audio tower: a log-mel spectrogram front end in JAX, then an image backbone over it.

    waveform  float32 [B, S]       mono samples in [-1, 1] at `sample_rate` Hz
    frames    [B, T, n_fft]        T = 1 + (S - n_fft) // hop (no padding, no centring)
    power     [B, T, n_fft/2 + 1]  |rfft(periodic Hann * frame)|^2 / (n_fft / 4)^2: a
                                   full-scale sine on a bin centre has power 1 (0 dBFS)
    log-mel   [B, T, n_mels]       log(max(power @ mel_filterbank, log_floor)), natural log
    normalise                      per example: (x - mean) / std over all T x n_mels values
    image     [B, T', M', 1]       T, n_mels zero-padded up to multiples of the backbone's
                                   patch_size (a ViT needs them; 1 for a CNN)
    backbone  any image model by name (`vit`, `resnet`)           -> features [B, D]

The mel filterbank is HTK's (mel = 2595 log10(1 + f / 700)), triangles of peak 1 with no
area normalisation, n_mels + 2 edges equally spaced in mel from fmin to fmax (torchaudio's
`melscale_fbanks(norm=None, mel_scale='htk')`). The front end runs on device inside the
compiled step: the data pipeline only moves waveforms, and any augmentation of the wave
would stay before it.

Defaults (16 kHz, n_fft 512 = 32 ms, hop 256 = 16 ms, 64 mels from 0 to 8 kHz): a 1 s clip
is a 61 x 64 log-mel image, padded to 64 x 64 for 8 x 8 ViT patches (64 tokens).
log_floor 1e-6 (-60 dB below a full-scale sine in one band): float32 FFT rounding of a
full-scale frame is about 1e-11 in these units, so quieter bands would be rounding noise.

`backbone` is a dict naming a model module and its fields, as the two-tower's towers are,
e.g. dict(name='vit', patch_size=8, width=64, ...). Put this model where an image tower
goes: `two_tower.Model(image=dict(name='audio', backbone=...), ...)`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxbig import models


def hz_to_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, fmin: float = 0.0,
                   fmax: float = 0.0) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels]: HTK triangles of peak 1 over the rfft bins.
    fmax 0 = sample_rate / 2."""
    fmax = fmax or sample_rate / 2
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f'mel band fmin={fmin}, fmax={fmax}: need 0 <= fmin < fmax <= '
                         f'sample_rate / 2 = {sample_rate / 2}')
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    rising = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def frame(waveform, n_fft: int, hop: int):
    """[B, S] -> [B, T, n_fft] overlapping frames, T = 1 + (S - n_fft) // hop."""
    samples = waveform.shape[-1]
    if samples < n_fft:
        raise ValueError(f'audio of {samples} samples is shorter than one frame (n_fft={n_fft})')
    num_frames = 1 + (samples - n_fft) // hop
    index = hop * np.arange(num_frames)[:, None] + np.arange(n_fft)[None, :]
    return waveform[:, index]


def power_spectrogram(waveform, n_fft: int, hop: int):
    """[B, S] -> float32 [B, T, n_fft // 2 + 1]: |rfft(hann * frame)|^2 / (n_fft / 4)^2
    (periodic Hann window; a full-scale sine on a bin centre has power 1)."""
    window = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(n_fft) / n_fft)
    spectrum = jnp.fft.rfft(frame(waveform.astype(jnp.float32), n_fft, hop) * window, axis=-1)
    return (spectrum.real**2 + spectrum.imag**2) / (n_fft / 4) ** 2


def log_mel_spectrogram(waveform, *, sample_rate: int = 16000, n_fft: int = 512,
                        hop: int = 256, n_mels: int = 64, fmin: float = 0.0, fmax: float = 0.0,
                        log_floor: float = 1e-6):
    """float32 [B, S] at sample_rate Hz -> float32 [B, T, n_mels]: natural log of the mel
    band powers, clamped below at log_floor (see the module docstring)."""
    bank = mel_filterbank(n_fft, sample_rate, n_mels, fmin, fmax)
    mel = power_spectrogram(waveform, n_fft, hop) @ bank
    return jnp.log(jnp.maximum(mel, log_floor))


def standardise(x, eps: float = 1e-5):
    """[B, ...] -> per example zero mean, unit variance over all non-batch axes."""
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axes, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(axes, keepdims=True) + eps)


def pad_to_multiple(x, multiple: int, axes=(1, 2)):
    """Zero-pads `axes` of x at the end up to multiples of `multiple`."""
    pad = [(0, 0)] * x.ndim
    for a in axes:
        pad[a] = (0, -x.shape[a] % multiple)
    return jnp.pad(x, pad)


class Model(nn.Module):
    """waveform float32 [B, S] -> features [B, D] of `backbone` over the log-mel image.
    Fields after `backbone` are the front end's (module docstring)."""

    backbone: Any = None  # dict(name=..., **fields); None = a small ViT
    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 256
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 0.0  # 0 = sample_rate / 2
    log_floor: float = 1e-6

    def setup(self):
        cfg = dict(self.backbone or dict(name='vit', patch_size=8, width=64, depth=2,
                                         num_heads=4, mlp_dim=128, pool='mean'))
        self.patch_multiple = int(cfg.get('patch_size', 1)) if cfg['name'] == 'vit' else 1
        self.encoder = models.get_model(cfg.pop('name'), **cfg)

    def log_mel(self, waveform):
        """[B, S] -> [B, T, n_mels] (before standardisation and padding)."""
        return log_mel_spectrogram(
            waveform, sample_rate=self.sample_rate, n_fft=self.n_fft, hop=self.hop,
            n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax, log_floor=self.log_floor,
        )

    def spectrogram_image(self, waveform):
        """[B, S] -> the backbone's input [B, T', M', 1]: standardised, padded log-mel."""
        x = pad_to_multiple(standardise(self.log_mel(waveform)), self.patch_multiple)
        return x[..., None]

    def features(self, waveform, *, train: bool = False):
        """[B, S] -> features [B, D]."""
        if waveform.ndim != 2:
            raise ValueError(f'audio model input {waveform.shape}: expected [batch, samples]')
        return self.encoder.features(self.spectrogram_image(waveform), train=train)

    def __call__(self, waveform, *, train: bool = False):
        return self.features(waveform, train=train)
