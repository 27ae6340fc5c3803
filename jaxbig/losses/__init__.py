"""Training objectives, one module per objective, each exposing

        loss_fn(apply_fn, params, batch, rngs, config, *, train) -> (loss, {name: metric})
        model_inputs(batch) -> tuple of positional model inputs (used to initialise the model)
    check(config)             (optional) one-line ConfigError for a whole experiment config
                              the loss cannot train (run.setup calls it before any write)
    bind(config) -> loss_fn   (optional) for losses that need frozen state built once per
                              run, e.g. a distillation teacher's params: the returned
                              function has the loss_fn signature and closes over that state

The loss and every metric are `jaxbig.aggregate` values — Mean(sum, count) (per target
token, per example, ...), ExpMean (perplexity) or Sum (a count) — never batch means: the
train step and the evaluators add sums and counts over micro-batches, devices and batches
and divide once, so no speed or memory switch changes the objective. A loss whose rows
interact (contrastive negatives) sets `COUPLES_EXAMPLES = True` and splits into
`embed(apply_fn, params, batch, rngs, config, *, train) -> {'rows': {...}, 'shared': {...}}`
and `loss_from_embeddings(emb, batch, config) -> (loss, metrics)`: it always sees the global
batch, and under gradient accumulation the step embeds micro-batch by micro-batch and
backpropagates through the cached embeddings' gradients (jaxbig/step.py). An evaluator's padding rows carry
`batch['example_mask']` 0 and must count nothing (`aggregate.example_mask`).

`apply_fn` is a flax `Module.apply` (the token losses pass `mutable=['intermediates']` to
read what a Mixture-of-Experts model sows). `config` is the experiment's `loss` section;
`config.name` picks the module (`'autoregressive'` -> `jaxbig.losses.autoregressive`).
"""

from jaxbig.config import ConfigError, resolve


def get_loss_module(name: str):
    """The module `jaxbig.losses.<name>` (has `loss_fn` and `model_inputs`)."""
    return resolve(__name__, name, 'loss.name', 'loss_fn')


def bind(module, config):
    """The loss function the step should call: `module.bind(config)` if defined."""
    return module.bind(config) if hasattr(module, 'bind') else module.loss_fn


def coupled_parts(module):
    """(embed, loss_from_embeddings) of a loss whose examples interact, else None."""
    if not getattr(module, 'COUPLES_EXAMPLES', False):
        return None
    return module.embed, module.loss_from_embeddings


def check_config(module, config) -> None:
    """The loss's own checks of the whole config (`module.check(config)`, if defined) and
    `check_accumulation`: one-line ConfigErrors before anything is built or written."""
    if hasattr(module, 'check'):
        module.check(config)
    check_accumulation(module, config)


def check_accumulation(module, config) -> None:
    """One-line ConfigError for grad_accum_steps > 1 with a loss that couples examples but
    cannot be split for the gradient cache: its micro-batches would each see only their
    own negatives — another objective."""
    accum = config.optimizer.grad_accum_steps
    if accum > 1 and getattr(module, 'COUPLES_EXAMPLES', False) and not (
            hasattr(module, 'embed') and hasattr(module, 'loss_from_embeddings')):
        raise ConfigError(
            f'optimizer.grad_accum_steps={accum}: loss.name={config.loss.name!r} couples the '
            'examples of a batch (in-batch negatives) and has no embed / '
            'loss_from_embeddings split, so micro-batches would change the objective; use 1')
    moe = config.model.get('moe') or {}
    pmap = config.parallel.get('strategy') == 'pmap'
    if moe.get('experts') and config.loss.get('moe_balance_group') == 'batch' and (
            accum > 1 or pmap):
        raise ConfigError(
            "loss.moe_balance_group='batch' balances the experts over one forward pass, which "
            f"grad_accum_steps={accum} or parallel.strategy='pmap' would split into another "
            "objective; use 'sequence' (each row: the same however the batch is split)")
