"""Knowledge distillation of a language model: a student learns a frozen teacher's softened
next-token distributions, mixed with the ordinary next-token loss (Hinton et al. 2015).

batch: as jaxbig.losses.autoregressive (inputs, targets, mask [batch, seq]).

    p_T = softmax(teacher_logits / T), q_T = softmax(student_logits / T)   [batch, seq, vocab]
    kl  = masked mean over tokens of KL(p_T || q_T) = sum_v p_T (log p_T - log q_T)
    total = alpha * T^2 * kl + (1 - alpha) * hard       (T^2 keeps gradient scales ~ T-free)

(reported as sums over the valid targets and their count, jaxbig/aggregate.py)

`hard` is the student's cross-entropy on the targets. Reported: loss (= hard, so val/loss
compares with a student trained from scratch), kl, distill_loss (= T^2 kl), perplexity,
token_accuracy.

`config` (the experiment's `loss` section): name='distillation', teacher (a training
workdir: its config.json gives the model, its latest checkpoint the params), temperature,
alpha, z_loss. `bind(config)` loads the teacher once per run; its params are closed over
by the loss function, so the teacher's forward runs inside the same compiled step (under
`lax.stop_gradient`, frozen; no optimizer state for it). They enter the step as constants,
replicated on every device: fine for teachers of a few hundred MB.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.config import ConfigError
from jaxbig.losses import autoregressive, moe_aux

model_inputs = autoregressive.model_inputs


def distillation_kl(student_logits, teacher_logits, mask, temperature: float):
    """Mean over the masked tokens of KL(softmax(t/T) || softmax(s/T)) in nats, as a Mean
    (sum, count); logits [batch, seq, vocab] (float32 inside), mask [batch, seq]."""
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return aggregate.mean(kl, mask)


def load_teacher(workdir: str):
    """(model, params) of a trained run: its config.json and its latest checkpoint."""
    from jaxbig import run as run_lib

    return run_lib.load_frozen(workdir, 'loss.teacher')


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True, teacher=None):
    """Returns (loss, metrics); `teacher` = (teacher model, teacher params), set by bind."""
    if teacher is None:
        raise ConfigError('loss.name=distillation needs its teacher: use losses.bind(config)')
    t_model, t_params = teacher
    t_logits = jax.lax.stop_gradient(
        t_model.apply({'params': t_params}, batch['inputs'], train=False)
    )
    logits, sown = apply_fn({'params': params}, batch['inputs'], train=train, rngs=rngs,
                            mutable=['intermediates'])
    mask = autoregressive.target_mask(batch)
    stats = autoregressive.token_cross_entropy(logits, batch['targets'], mask)
    temperature, alpha = config.get('temperature', 2.0), config.get('alpha', 0.5)
    kl = distillation_kl(logits, t_logits, mask, temperature)
    count = kl.count
    soft = aggregate.Mean(temperature**2 * kl.total, count)
    total = alpha * soft.total + (1.0 - alpha) * stats['loss'].total
    z_loss = config.get('z_loss', 0.0)
    if z_loss:
        total = total + z_loss * stats['log_z_sq'].total
    metrics = {
        'loss': stats['loss'],
        'perplexity': aggregate.exp_of(stats['loss']),
        'token_accuracy': stats['accuracy'],
        'targets': stats['targets'],
        'kl': kl,
        'distill_loss': soft,
    }
    moe = moe_aux.stats_of(sown)  # a Mixture-of-Experts student: its aux losses, same count
    if moe is not None:
        return moe_aux.add_to(aggregate.Mean(total, count), metrics, moe, mask, config)
    return aggregate.Mean(total, count), metrics


def bind(config):
    """Loads the teacher named by `config.teacher`; returns the loss_fn closing over it."""
    if not config.get('teacher'):
        raise ConfigError('loss.teacher: set it to a trained workdir, e.g. runs/lm')
    if not 0.0 <= config.get('alpha', 0.5) <= 1.0:
        raise ConfigError(f'loss.alpha={config.alpha}: must be in [0, 1]')
    if config.get('temperature', 2.0) <= 0:
        raise ConfigError(f'loss.temperature={config.temperature}: must be > 0')
    teacher = load_teacher(config.teacher)

    def bound(apply_fn, params, batch, rngs, config, *, train: bool = True):
        return loss_fn(apply_fn, params, batch, rngs, config, train=train, teacher=teacher)

    return bound
