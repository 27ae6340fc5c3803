"""Rotary position embedding (RoPE): the frequencies of each scaling kind, and the rotation.

    RopeScaling   how the frequencies are stretched for a longer context (a frozen,
                  hashable dataclass, so it can be a flax module field):
                    'default'  inv_freq_i = base**(-2i / d)
                    'linear'   inv_freq / factor (position interpolation)
                    'llama3'   Llama 3.1: wavelengths longer than original_max_len /
                               low_freq_factor divided by factor, shorter than
                               original_max_len / high_freq_factor kept, a smooth
                               blend in between
                    'yarn'     YaRN: per-frequency blend of interpolation (inv_freq /
                               factor) and extrapolation over the rotation counts
                               beta_slow .. beta_fast at original_max_len (bounds rounded
                               outwards), and cos / sin scaled by attention_factor
                               (0 = 0.1 ln(factor) + 1)
    frequencies   (head_dim, base, scaling) -> (inv_freq float32 [head_dim / 2], the factor
                  cos / sin are multiplied by); NumPy, computed once at trace time
    apply_rope    x [batch, seq, heads, head_dim], positions [seq] or [batch, seq] ->
                  same shape; half-split (GPT-NeoX / Llama) layout, float32 inside

The formulas are those of the Llama 3.1 and YaRN papers as Hugging Face transformers
implements them (tests/test_rope.py holds them against its ROPE_INIT_FUNCTIONS).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

KINDS = ('default', 'linear', 'llama3', 'yarn')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """One RoPE scaling; the fields a kind does not use are ignored. See the module doc."""

    kind: str = 'default'
    factor: float = 1.0
    original_max_len: int = 0  # llama3, yarn: the pretraining context length
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float = 0.0  # yarn: 0 = 0.1 * ln(factor) + 1

    def check(self):
        """Raises ValueError (one line naming the model.* field) on what cannot be computed."""
        if self.kind not in KINDS:
            raise ValueError(f'model.rope_scaling={self.kind!r}: expected one of {KINDS}')
        if self.kind != 'default' and not self.factor > 0:
            raise ValueError(f'model.rope_factor={self.factor}: expected > 0')
        if self.kind in ('llama3', 'yarn') and self.original_max_len < 1:
            raise ValueError(f"model.rope_scaling={self.kind!r} needs model.rope_original_max_len "
                             '(the pretraining context length)')
        if self.kind == 'llama3' and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f'model.rope_high_freq_factor={self.high_freq_factor} must exceed '
                             f'model.rope_low_freq_factor={self.low_freq_factor}')


def _llama3(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    wavelen = 2 * math.pi / inv_freq
    long_wavelen = s.original_max_len / s.low_freq_factor  # longer: interpolated fully
    short_wavelen = s.original_max_len / s.high_freq_factor  # shorter: kept
    smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = np.where(wavelen > long_wavelen, inv_freq / s.factor, inv_freq)
    middle = (wavelen >= short_wavelen) & (wavelen <= long_wavelen)
    return np.where(middle, blended, out)


def _yarn(inv_freq: np.ndarray, head_dim: int, base: float, s: RopeScaling) -> np.ndarray:
    def dim_of(rotations):  # the feature index whose wavelength fits `rotations` times
        return head_dim * math.log(s.original_max_len / (rotations * 2 * math.pi)) / (
            2 * math.log(base))

    low = max(math.floor(dim_of(s.beta_fast)), 0)
    high = min(math.ceil(dim_of(s.beta_slow)), head_dim - 1)
    high = high + 0.001 if high == low else high
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (the frequency as trained), 0: interpolate
    return inv_freq / s.factor * (1 - keep) + inv_freq * keep


def frequencies(head_dim: int, base: float, scaling: RopeScaling | None = None
                ) -> tuple[np.ndarray, float]:
    """(inv_freq float32 [head_dim // 2], cos / sin multiplier) for a rotary head_dim."""
    scaling = scaling or RopeScaling()
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = 1.0
    if scaling.kind == 'linear':
        inv_freq = inv_freq / scaling.factor
    elif scaling.kind == 'llama3':
        inv_freq = _llama3(inv_freq, scaling)
    elif scaling.kind == 'yarn':
        inv_freq = _yarn(inv_freq, head_dim, base, scaling)
        factor = scaling.attention_factor or (
            0.1 * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0)
    elif scaling.kind != 'default':
        scaling.check()
    return inv_freq.astype(np.float32), float(factor)


def apply_rope(x, positions, base=10000.0, scaling: RopeScaling | None = None, dim: int = 0):
    """Rotary position embedding, the 'half-split' (GPT-NeoX / Llama) layout.

    x: [batch, seq, heads, head_dim]; positions: [seq] or [batch, seq]. Feature pair
    (x[..., i], x[..., i + dim/2]) is rotated by the angle positions * inv_freq_i
    (`frequencies` of dim), then scaled by the kind's cos / sin multiplier (1 but for
    YaRN). dim: the rotated leading features of each head (0: all; GPT-NeoX's rotary_pct
    rotates a part and passes the rest through). Computed in float32, returned in x.dtype.
    """
    dim = dim or x.shape[-1]
    inv_freq, factor = frequencies(dim, base, scaling)
    return rotate(x, positions, inv_freq, factor, dim)


def rotate(x, positions, inv_freq, factor=1.0, dim: int = 0):
    """apply_rope with the frequencies given: inv_freq [dim / 2] and the cos / sin multiplier
    (NumPy, or traced: a layer of a local / global pattern picks its own inside a scan)."""
    dim = dim or x.shape[-1]
    if dim < x.shape[-1]:
        rotated = rotate(x[..., :dim], positions, inv_freq, factor)
        return jnp.concatenate([rotated, x[..., dim:]], axis=-1)
    angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., seq, half]
    sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]  # add heads axis
    if not isinstance(factor, float) or factor != 1.0:
        sin, cos = sin * factor, cos * factor
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
