"""Model families, one module each; `config.model.name = 'gpt'` means `jaxbig.models.gpt.Model`.

There is no registry: adding `jaxbig/models/foo.py` with a linen `Model` class makes
`model.name = 'foo'` work.
"""

import importlib
import pathlib


def get_model(name: str, **kwargs):
    """Returns `jaxbig.models.<name>.Model(**kwargs)` (the module's fields as keywords)."""
    module_name = f'{__name__}.{name}'
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the model exists but one of its own imports failed
            raise
        available = sorted(
            p.stem for p in pathlib.Path(__file__).parent.glob('*.py') if p.stem != '__init__'
        )
        raise ValueError(
            f'model.name={name!r}: no module {module_name} (available: {", ".join(available)})'
        ) from None
    return module.Model(**kwargs)


def from_config(config):
    """The experiment's model: `config.model` built by `get_model`, with LoRA adapters when
    `config.lora` names targets (see jaxbig/lora.py). Train, eval, generate and the
    benchmarks all build their model here, so a config means the same model everywhere."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    model = get_model(config.model.name, **kwargs)
    from jaxbig import lora  # noqa: PLC0415 (lora imports finetune, which imports models)

    return lora.wrap(model, config.get('lora'))
