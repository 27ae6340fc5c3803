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
