"""What a Hugging Face decoder family is to jaxbig's import / export (jaxbig.interop.hf),
and the helpers every family module shares.

A family gives `model_config(hf) -> jaxbig model section` (ConfigError naming the field and
value it cannot represent), `hf_config(model) -> config.json fields`, `tensors(model)`:
{hf name template: (jaxbig paths, to_jaxbig, to_hf)}, and `reasons(model)`: the fields of a
jaxbig GPT that keep it from being one of the family (empty: export can write it).
Templates hold '{i}' for per-layer tensors and '{j}' for per-expert ones (a slice of the
stacked [experts, ...] kernel); jaxbig paths are relative to a layer
(`attn/query/kernel`) for those and absolute (`embed/embedding`) otherwise.
`to_jaxbig(hf tensor) -> tuple of jaxbig arrays` (one per path); `to_hf(*jaxbig arrays) ->
hf tensor`. HF Linear weights are [out, in] (GPT-2's Conv1D: [in, out]); jaxbig kernels are
[in..., out...].
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxbig.config import ConfigError
from jaxbig.interop.mapped import _c as c  # noqa: F401 (a C-contiguous copy, for the families)


def same(x):
    """to_jaxbig of a tensor stored as it is: one jaxbig array, unchanged."""
    return (x,)


def ident(x):
    """to_hf of an array stored as it is."""
    return x


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_config: Callable
    hf_config: Callable
    tensors: Callable
    reasons: Callable
    ignored: tuple[str, ...] = ()  # suffixes of stored buffers that carry no weights
    moe: bool = False  # reads / writes Mixture-of-Experts layers (else: dense GPTs only)


def need(hf: dict, field: str, ok: bool, why: str):
    """A ConfigError line naming config.json's `field` unless `ok`."""
    if not ok:
        raise ConfigError(f'config.json: {field}={hf.get(field)!r} is not representable in '
                          f"jaxbig's GPT ({why})")


def mismatches(model, **want) -> list[str]:
    """'field=value' for each model field that differs from `want`."""
    return [f'{k}={getattr(model, k)!r}' for k, v in want.items() if getattr(model, k) != v]


def no_gemma_switches(model) -> list[str]:
    """mismatches for the switches only Gemma 2 / 3 use (window patterns, a logit scale of
    their own, soft-capping, a local RoPE): the other families cannot write them."""
    return mismatches(model, window_pattern='', attention_scale=0.0, attn_softcap=0.0,
                      logit_softcap=0.0, rope_local_base=0.0)
