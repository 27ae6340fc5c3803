"""Model families, one module each; `config.model.name = 'gpt'` means `jaxbig.models.gpt.Model`.

There is no registry: adding `jaxbig/models/foo.py` with a linen `Model` class makes
`model.name = 'foo'` work.
"""

from jaxbig.config import resolve


def get_model(name: str, **kwargs):
    """Returns `jaxbig.models.<name>.Model(**kwargs)` (the module's fields as keywords)."""
    return resolve(__name__, name, 'model.name', 'Model').Model(**kwargs)


def from_config(config):
    """The experiment's model: `config.model` built by `get_model`, with LoRA adapters when
    `config.lora` names targets (see jaxbig/lora.py). Train, eval, generate and the
    benchmarks all build their model here, so a config means the same model everywhere."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    model = get_model(config.model.name, **kwargs)
    from jaxbig import lora  # noqa: PLC0415 (lora imports finetune, which imports models)

    return lora.wrap(model, config.get('lora'))
