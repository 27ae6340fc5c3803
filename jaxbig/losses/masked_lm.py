"""Masked-language-modelling loss (BERT's recipe), the masking done on device.

batch: inputs int32[B, T] (token ids: the LM pipeline's packed sequences,
       jaxbig/data/pipelines/lm.py; its targets are not used), mask float32[B, T] (1 = a real token; packed: all ones).

`corrupt`: every real position is chosen with probability `rate` (0.15; independent
Bernoulli draws, as Hugging Face's DataCollatorForLanguageModeling); a chosen position
becomes `mask_id` with probability `mask_frac` (0.8), a token drawn uniformly from
[0, random_ids) with `random_frac` (0.1; it may draw the original), and is left unchanged
otherwise (0.1). The model reads the corrupted ids (attending to the real tokens only) and
the loss is the cross entropy of the original ids at the chosen positions only, in nats per
chosen token (sums and counts, jaxbig/aggregate.py); unchosen positions do not enter it.

The mask token: the byte vocabulary has 256 ids, so jaxbig's BERT has vocab_size=257 and
mask_id=256, random replacements drawn from the 256 bytes (random_ids=256); an imported
Hugging Face BERT uses its tokenizer's [MASK] id and its whole vocabulary.

Randomness, on device: training draws row r's masks from fold_in(fold_in(rngs['examples'],
STREAM), r), where rngs['examples'] is the update's rng (fold_in(state.rng, step),
jaxbig/step.py) and r the row's index in the global batch (`batch['row_ids']`, set by the
step): the masks differ every step, are a pure function of (seed, step) — a resumed run
masks exactly as an uninterrupted one — and do not depend on how the batch is split over
micro-batches or devices (direct callers passing only rngs['dropout'] get the same per-row
draw from it, rows numbered 0..B-1).
Evaluation passes no rngs: the key is PRNGKey(eval_seed) folded with a hash of the batch's
ids, so the fixed eval batches are masked the same way at every evaluation.

`config` (the `loss` section, `section()` builds it): name='masked_lm', mask_id,
random_ids, rate, mask_frac, random_frac, eval_seed.
Metrics: loss, perplexity (exp loss), masked_accuracy (argmax = original id at the chosen
positions), chosen_fraction (chosen / real positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.config import ConfigError
from jaxbig.losses.autoregressive import token_cross_entropy

STREAM = 0x4D4C4D  # folded into the step's rng: the masking stream, apart from dropout's


def section(mask_id: int = 256, random_ids: int = 256, **overrides) -> dict:
    """The `loss` section: BERT's 15 % of positions, 80 / 10 / 10 mask / random / keep."""
    return dict(name='masked_lm', mask_id=mask_id, random_ids=random_ids, rate=0.15,
                mask_frac=0.8, random_frac=0.1, eval_seed=0, **overrides)


def corrupt(key, tokens, valid, *, rate: float, mask_id: int, random_ids: int,
            mask_frac: float = 0.8, random_frac: float = 0.1):
    """tokens int[B, T], valid bool[B, T] -> (corrupted int[B, T], chosen bool[B, T])."""
    k_choose, k_kind, k_token = jax.random.split(key, 3)
    chosen = valid & jax.random.bernoulli(k_choose, rate, tokens.shape)
    u = jax.random.uniform(k_kind, tokens.shape)
    masked = chosen & (u < mask_frac)
    randomised = chosen & (u >= mask_frac) & (u < mask_frac + random_frac)
    random_tokens = jax.random.randint(k_token, tokens.shape, 0, random_ids, tokens.dtype)
    out = jnp.where(masked, jnp.asarray(mask_id, tokens.dtype),
                    jnp.where(randomised, random_tokens, tokens))
    return out, chosen


def corrupt_rows(key, row_ids, tokens, valid, **kwargs):
    """`corrupt` of each row r of tokens [B, T] with its own key fold_in(key, row_ids[r]):
    a row's masks depend on its global index only, not on the rows beside it."""
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(row_ids)
    return jax.vmap(lambda k, t, v: corrupt(k, t, v, **kwargs))(keys, tokens, valid)


def batch_key(seed: int, tokens):
    """PRNGKey(seed) folded with a hash of `tokens` (uint32 arithmetic, wrapping): a fixed
    key per batch content, for evaluation."""
    weights = jnp.arange(1, tokens.size + 1, dtype=jnp.uint32).reshape(tokens.shape)
    digest = jnp.sum(tokens.astype(jnp.uint32) * (weights * jnp.uint32(2654435761)),
                     dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.PRNGKey(seed), digest)


def _check(config) -> dict:
    args = dict(rate=config.get('rate', 0.15), mask_id=config.get('mask_id', -1),
                random_ids=config.get('random_ids', 0),
                mask_frac=config.get('mask_frac', 0.8),
                random_frac=config.get('random_frac', 0.1))
    if args['mask_id'] < 0:
        raise ConfigError(f"loss.mask_id={args['mask_id']}: set the [MASK] token id "
                          '(bytes: 256 with model.vocab_size=257)')
    if not 0.0 < args['rate'] <= 1.0:
        raise ConfigError(f"loss.rate={args['rate']}: must be in (0, 1]")
    if min(args['mask_frac'], args['random_frac']) < 0 or (
            args['mask_frac'] + args['random_frac'] > 1.0):
        raise ConfigError(f"loss.mask_frac={args['mask_frac']}, loss.random_frac="
                          f"{args['random_frac']}: must be >= 0 with a sum <= 1")
    if args['random_ids'] < 1:
        raise ConfigError(f"loss.random_ids={args['random_ids']}: must be >= 1 (random "
                          'replacements are drawn from [0, random_ids))')
    return args


def model_inputs(batch):
    return (batch['inputs'], batch['mask'])


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics) for one batch; see the module docstring."""
    args = _check(config)
    tokens = batch['inputs']
    valid = (batch['mask'] > 0) & (aggregate.example_mask(batch, tokens.shape[0])[:, None] > 0)
    train_key = (rngs or {}).get('examples', (rngs or {}).get('dropout'))
    if train_key is not None:
        rows = batch.get('row_ids', jnp.arange(tokens.shape[0]))
        corrupted, chosen = corrupt_rows(jax.random.fold_in(train_key, STREAM), rows, tokens,
                                         valid, **args)
    else:
        key = batch_key(config.get('eval_seed', 0), tokens)
        corrupted, chosen = corrupt(key, tokens, valid, **args)
    logits = apply_fn({'params': params}, corrupted, batch['mask'], train=train, rngs=rngs)
    if logits.ndim != 3:
        raise ConfigError(f'loss.name=masked_lm: the model gives {logits.ndim}-D outputs '
                          f'{tuple(logits.shape)}, not logits [batch, seq, vocab] (a BERT '
                          "without its MLM head? set model.head='mlm')")
    vocab = logits.shape[-1]
    if max(args['mask_id'], args['random_ids'] - 1) >= vocab:
        raise ConfigError(f"loss.mask_id={args['mask_id']} / random_ids={args['random_ids']}: "
                          f'outside the model vocabulary ({vocab} ids); raise '
                          'model.vocab_size')
    stats = token_cross_entropy(logits, tokens, chosen)
    metrics = {
        'loss': stats['loss'],
        'perplexity': aggregate.exp_of(stats['loss']),
        'masked_accuracy': stats['accuracy'],
        'targets': stats['targets'],
        'chosen_fraction': aggregate.mean(chosen, valid),
    }
    return stats['loss'], metrics
