"""Hugging Face decoder families <-> jaxbig's GPT (`jaxbig.models.gpt`), one module each:

    gpt2.py      GPT2LMHeadModel
    llama.py     LlamaForCausalLM (Llama 3.x rope scaling), MistralForCausalLM (sliding
                 window), Qwen2ForCausalLM, Qwen3ForCausalLM (q/k norms)
    gemma.py     GemmaForCausalLM (1 + w RMSNorm, GeGLU, scaled embeddings)
    olmo2.py     Olmo2ForCausalLM (norms after the sublayers, q/k norm over the projection)
    gpt_neox.py  GPTNeoXForCausalLM (Pythia: parallel residual, partial rotary)
    phi3.py      Phi3ForCausalLM (fused qkv / gate-up; export with --as phi3)
    llama_moe.py MixtralForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM (Mixture-of-
                 Experts: model.moe)

`family_of(config.json)` picks the family an import reads; `family_for(model, want)` the one
an export writes (the first in FAMILIES that can represent the model, or `--as want`).
What a family is: jaxbig.interop.family.
"""

from __future__ import annotations

from jaxbig.config import ConfigError
from jaxbig.interop.family import Family
from jaxbig.interop.gemma import GEMMA
from jaxbig.interop.gpt2 import GPT2
from jaxbig.interop.gpt_neox import GPT_NEOX
from jaxbig.interop.llama import LLAMA
from jaxbig.interop.llama_moe import LLAMA_MOE
from jaxbig.interop.olmo2 import OLMO2
from jaxbig.interop.phi3 import PHI3

# export's order of preference: a model Llama can represent exports as Llama, not Phi-3
FAMILIES = (GPT2, LLAMA, GEMMA, OLMO2, GPT_NEOX, PHI3, LLAMA_MOE)


def family_of(hf: dict) -> Family:
    """The family of a Hugging Face config.json, by its `architectures` entry."""
    arch = (hf.get('architectures') or [''])[0]
    for family in FAMILIES:
        if arch in family.architectures:
            return family
    supported = [a for f in FAMILIES for a in f.architectures]
    raise ConfigError(f'config.json: architecture {arch!r} is not supported '
                      f'(supported: {", ".join(supported)})')


def family_for(model, want: str = '') -> Family:
    """The family a jaxbig GPT exports as (`want`: a family's name, or '' for the first
    that can represent it)."""
    moe = [f'moe.experts={model.moe_spec.experts}'] if model.moe_spec else []
    reasons = {f.name: f.reasons(model) + ([] if f.moe else moe) for f in FAMILIES}
    for family in FAMILIES:
        if (not want or want == family.name) and not reasons[family.name]:
            return family
    names = [want] if want else list(reasons)
    if want and want not in reasons:
        raise ConfigError(f'--as {want!r}: expected one of {list(reasons)}')
    raise ConfigError('this GPT matches no exportable family: ' + '; '.join(
        f'{n} needs other {", ".join(reasons[n])}' for n in names))
