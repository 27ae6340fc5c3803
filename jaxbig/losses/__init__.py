"""Training objectives, one module per objective, each exposing

        loss_fn(apply_fn, params, batch, rngs, config, *, train) -> (scalar loss, {name: scalar})
        model_inputs(batch) -> tuple of positional model inputs (used to initialise the model)
    bind(config) -> loss_fn   (optional) for losses that need frozen state built once per
                              run, e.g. a distillation teacher's params: the returned
                              function has the loss_fn signature and closes over that state

`config` is the experiment's `loss` section; `config.name` picks the module
(`'autoregressive'` -> `jaxbig.losses.autoregressive`).
"""

from jaxbig.config import resolve


def get_loss_module(name: str):
    """The module `jaxbig.losses.<name>` (has `loss_fn` and `model_inputs`)."""
    return resolve(__name__, name, 'loss.name', 'loss_fn')


def bind(module, config):
    """The loss function the step should call: `module.bind(config)` if defined."""
    return module.bind(config) if hasattr(module, 'bind') else module.loss_fn
