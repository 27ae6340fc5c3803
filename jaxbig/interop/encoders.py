"""Which name-mapped encoder family a Hugging Face checkpoint or a jaxbig model is — ViT
(interop/vision.py) or CLIP (interop/clip.py) — and the import / export entry points
`hf.import_dir` / `hf.export_run` call for them. Above both family modules, so neither
imports the other back.
"""

from __future__ import annotations

import os

from jaxbig.config import ConfigError
from jaxbig.interop import clip
from jaxbig.interop.mapped import export_mapped, import_mapped
from jaxbig.interop.tensors import TensorReader
from jaxbig.interop.vision import (DTYPES, VIT_ARCHS, _vit_layout, stored_dtype, vit_example,
                                   vit_hf, vit_reasons, vit_run_config, vit_tensors)


def architectures() -> tuple[str, ...]:
    return (*VIT_ARCHS, *clip.ARCHS)


def handles(hf: dict) -> bool:
    return (hf.get('architectures') or [''])[0] in architectures()


def _family(model):
    """(name, tensors(model), hf_config(model, shapes)) of a jaxbig model, or None."""
    if _vit_layout(model) is not None:
        reasons = vit_reasons(_vit_layout(model)[0])
        return 'vit', reasons, vit_tensors, vit_hf
    if clip.layout(model) is not None:
        return 'clip', clip.reasons(model), clip.tensors, clip.hf_config
    return None


def handles_model(model) -> bool:
    return _family(model) is not None


def import_dir(directory: str, workdir: str, hf: dict, *, param_dtype: str = '') -> dict:
    """`hf.import_dir` for the encoder families (see the module docstring)."""
    if param_dtype not in ('', *DTYPES.values()):
        raise ConfigError(f'--param-dtype {param_dtype}: expected one of '
                          f'{", ".join(sorted(set(DTYPES.values())))}')
    reader = TensorReader(directory)
    names = set(reader.names())
    dtype = param_dtype or stored_dtype(reader)
    is_vit = hf['architectures'][0] in VIT_ARCHS
    config = vit_run_config(hf, names, dtype) if is_vit else clip.run_config(hf, dtype)
    example = vit_example(hf) if is_vit else clip.example(hf)
    prefix = 'vit.' if 'vit.embeddings.cls_token' in names else ''

    def specs_of(model):
        name, _, tensors, _ = _family(model)
        return name, tensors(model, prefix)

    tokenizer = '' if is_vit else os.path.join(directory, 'tokenizer.json')  # CLIP's captions
    return import_mapped(directory, workdir, reader, config, example, specs_of,
                         tokenizer=tokenizer)


def export_run(run, model, out: str, *, as_family: str = '') -> dict:
    """`hf.export_run` for a jaxbig vit / classifier on a vit / two_tower CLIP."""
    name, reasons, tensors, hf_config = _family(model)
    if as_family:
        raise ConfigError(f'--as {as_family!r}: a {name} model exports as itself; drop --as')
    if reasons:
        raise ConfigError(f'this model matches no exportable family: {name} needs other '
                          f'{", ".join(reasons)}')
    return export_mapped(run, model, out, name, tensors, hf_config)
