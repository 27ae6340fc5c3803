"""GRPO: online RL with a verifiable reward, rollouts sampled inside the train step.

batch (jaxbig.data.pipelines.prompts): prompt, prompt_positions int32[b, P] (left-padded),
answer int32[b, A] (the reference response + eos, -1 padding); `row_ids` [b] (set by the
step: each row's index in the global batch).

Per update, inside the one compiled step (so sampling and the update share the mesh):

1. Rollouts: each prompt is answered G = `group_size` times by the policy (params under
   stop_gradient) with the KV-cache sampler (jaxbig.generate), at `temperature`, at most
   `max_new_tokens`, ending at eos. Row r's g-th sample uses the key fold_in(fold_in(k, r), g)
   with k = the step's examples key (fold_in(state rng, step)), so a rollout depends on
   (seed, step, row) only: resume is exact and micro-batches / devices sample the same.
   Evaluators (no step key) use key 0: the same held-out samples at every evaluation.
2. Reward (`reward`), per sample, from its tokens up to eos against the answer's:
   'exact': 1 if the response is the answer, else 0; 'prefix' (default): 1 if exact, else
   0.5 x (answer tokens the response starts with) / max(answer, response length), eos left
   out of both — a dense, verifiable signal for the embedded name task that pays for the
   right start of the name and for stopping after it.
3. Advantages, per group: A = (r - mean_g r) / (std_g r + 1e-4), std with Bessel's
   correction (TRL's scale_rewards='group'); a group whose rewards are all equal has A = 0.
4. Objective per completion token t (logp: the policy's log-prob of the sampled token):
       ratio = exp(logp - logp_old),  logp_old = stop_gradient(logp)  (one update per rollout:
               ratio = 1, its gradient A * d logp; the clip matters only for reused samples)
       loss_t = -min(ratio A, clip(ratio, 1 - epsilon, 1 + epsilon) A) + beta * kl_t
       kl_t   = exp(ref - logp) - (ref - logp) - 1   (the k3 estimator, >= 0)
   normalised per token: a Mean over every completion token of the update (TRL's
   loss_type='dapo'), so longer responses weigh by their length and no split changes it.

The reference (for beta > 0) is `loss.reference`: a workdir loaded once (frozen, replicated:
jaxbig.losses.preference.load_reference) or 'adapters_off' for a LoRA policy.

Metrics: loss, kl (per token), reward, reward_std (per group), exact_match,
frac_reward_zero_std (groups with no signal), completion_length (tokens, eos included),
completions (a Sum).

`config`: name='grpo', group_size, max_new_tokens, temperature, epsilon, beta, reward,
reference, eos_id (the tokenizer's end of sequence; the experiment resolves it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.config import ConfigError
from jaxbig.losses import preference

REWARDS = ('prefix', 'exact')


def model_inputs(batch):
    return (batch['prompt'],)


# ------------------------------------------------------------------------------ the math

def group_advantages(rewards):
    """rewards float32[b, G] -> advantages [b, G] and each group's std [b]."""
    g = rewards.shape[-1]
    mean = jnp.mean(rewards, axis=-1, keepdims=True)
    var = jnp.sum(jnp.square(rewards - mean), axis=-1, keepdims=True) / max(g - 1, 1)
    std = jnp.sqrt(var)
    return (rewards - mean) / (std + 1e-4), std[..., 0]


def per_token_loss(logp, old_logp, ref_logp, advantages, *, epsilon: float, beta: float):
    """The clipped objective plus beta * k3 per token; logp, old_logp, ref_logp [n, N],
    advantages [n] -> [n, N] (ref_logp None when beta = 0)."""
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    loss = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - epsilon, 1 + epsilon) * a)
    if beta:
        loss = loss + beta * k3(ref_logp, logp)
    return loss


def k3(ref_logp, logp):
    """The k3 estimator of KL(policy || reference) per token (Schulman): >= 0."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def rewards(completion, lengths, answer, kind: str = 'prefix'):
    """float32 rewards [n] and exact matches [n] of completion int32[n, N] (row i's response:
    its first lengths[i] tokens, eos included) against answer int32[n, A] (-1 padded)."""
    n, width = completion.shape
    a_len = jnp.sum(answer >= 0, axis=-1)
    size = max(width, answer.shape[1])
    pad = lambda x, fill: jnp.pad(x, ((0, 0), (0, size - x.shape[1])), constant_values=fill)  # noqa
    idx = jnp.arange(size)
    got = jnp.where(idx < lengths[:, None], pad(completion, -2), -2)
    want = pad(answer, -1)
    exact = (lengths == a_len) & jnp.all((got == want) | (idx >= a_len[:, None]), axis=-1)
    if kind == 'exact':
        return exact.astype(jnp.float32), exact
    eos = jnp.take_along_axis(answer, jnp.maximum(a_len - 1, 0)[:, None], axis=-1)
    last = jnp.take_along_axis(completion, jnp.maximum(lengths - 1, 0)[:, None], axis=-1)
    said = lengths - (last == eos)[:, 0]  # the response without the eos that ended it
    same = jnp.cumprod((got == want) & (idx < (a_len - 1)[:, None]), axis=-1)
    prefix = jnp.sum(same, axis=-1) / jnp.maximum(jnp.maximum(a_len - 1, said), 1)
    return jnp.where(exact, 1.0, 0.5 * prefix).astype(jnp.float32), exact


# ---------------------------------------------------------------------------- rollouts

def rollouts(model, params, batch, key, config):
    """(prompt [n, P], prompt positions [n, P], completion [n, N], lengths [n], answer
    [n, A]) with n = b * G: G samples of each prompt (no gradient)."""
    from jaxbig import generate

    g = int(config.group_size)
    rows = batch.get('row_ids', jnp.arange(batch['prompt'].shape[0], dtype=jnp.int32))
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)
    keys = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(g)))(keys)
    rep = lambda x: jnp.repeat(x, g, axis=0)  # noqa: E731
    prompt, positions = rep(batch['prompt']), rep(batch['prompt_positions'])
    dmodel, dparams = generate.decoding_form(model, jax.lax.stop_gradient(params))
    completion, lengths = generate.sample_loop(
        dparams, prompt, positions, jax.random.wrap_key_data(keys.reshape(-1, 2)),
        model=dmodel, max_new_tokens=int(config.max_new_tokens),
        temperature=float(config.get('temperature', 1.0)), top_k=0, top_p=1.0, stop=None,
        eos_id=int(config.eos_id), stream=False)
    return prompt, positions, completion, lengths, rep(batch['answer'])


def completion_logps(apply_fn, params, prompt, positions, completion, train, rngs=None):
    """log-probs float32[n, N] of the completion's tokens after the left-padded prompt."""
    width = prompt.shape[1]
    tokens = jnp.concatenate([prompt, completion], axis=1)
    start = jnp.max(positions, axis=1, keepdims=True) + 1
    pos = jnp.concatenate([jnp.maximum(positions, 0),
                           start + jnp.arange(completion.shape[1])[None]], axis=1)
    segments = jnp.concatenate([(positions >= 0).astype(jnp.int32),
                                jnp.ones_like(completion)], axis=1)
    logits = apply_fn({'params': params}, tokens[:, :-1], train=train, rngs=rngs,
                      positions=pos[:, :-1], segment_ids=segments[:, :-1])
    logp = jax.nn.log_softmax(logits[:, width - 1:].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, completion[..., None], axis=-1)[..., 0]


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True, reference=None):
    """Returns (loss, metrics); `reference` (set by bind): (apply_fn, params, prompt,
    positions, completion) -> reference log-probs [n, N], or None (beta = 0)."""
    beta = float(config.get('beta', 0.0))
    if beta and reference is None:
        raise ConfigError('loss.beta > 0 needs the reference model: use losses.bind(config)')
    key = (rngs or {}).get('examples', jax.random.PRNGKey(0))
    model = apply_fn.__self__  # the (possibly LoRA-wrapped) module whose apply this is
    prompt, positions, completion, lengths, answer = rollouts(model, params, batch, key, config)
    g = int(config.group_size)
    reward, exact = rewards(completion, lengths, answer, config.get('reward', 'prefix'))
    advantages, std = group_advantages(reward.reshape(-1, g))
    dropout = {'dropout': rngs['dropout']} if rngs and 'dropout' in rngs else None
    logp = completion_logps(apply_fn, params, prompt, positions, completion, train, dropout)
    ref = None
    if beta:
        ref = jax.lax.stop_gradient(reference(apply_fn, params, prompt, positions, completion))
    per_token = per_token_loss(logp, jax.lax.stop_gradient(logp), ref,
                               jax.lax.stop_gradient(advantages.reshape(-1)),
                               epsilon=float(config.get('epsilon', 0.2)), beta=beta)
    rows = aggregate.example_mask(batch, batch['prompt'].shape[0])
    samples = jnp.repeat(rows, g)
    mask = (jnp.arange(completion.shape[1])[None] < lengths[:, None]) * samples[:, None]
    metrics = {
        'loss': aggregate.mean(per_token, mask),
        'reward': aggregate.mean(reward, samples),
        'reward_std': aggregate.mean(std, rows),
        'exact_match': aggregate.mean(exact.astype(jnp.float32), samples),
        'frac_reward_zero_std': aggregate.mean((std < 1e-6).astype(jnp.float32), rows),
        'completion_length': aggregate.mean(lengths.astype(jnp.float32), samples),
        'completions': aggregate.Sum(samples.sum()),
    }
    if beta:
        metrics['kl'] = aggregate.mean(k3(ref, logp), mask)
    return metrics['loss'], metrics


def check(config) -> None:
    loss = config.loss
    if loss.get('reward', 'prefix') not in REWARDS:
        raise ConfigError(f"loss.reward={loss.get('reward')!r}: expected one of {REWARDS}")
    for key in ('group_size', 'max_new_tokens'):
        if not isinstance(loss.get(key), int) or loss.get(key) < 1:
            raise ConfigError(f'loss.{key}={loss.get(key)!r} must be an int >= 1')
    if loss.group_size < 2:
        raise ConfigError(f'loss.group_size={loss.group_size}: a group needs >= 2 samples '
                          '(advantages are relative to the group)')
    if not isinstance(loss.get('eos_id'), int) or loss.eos_id < 0:
        raise ConfigError(f"loss.eos_id={loss.get('eos_id')!r}: the tokenizer's "
                          'end-of-sequence id (rollouts end there)')
    if config.model.get('name') != 'gpt' or (config.model.get('moe') or {}).get('experts'):
        raise ConfigError('loss.name=grpo: the policy must be a dense GPT (KV-cache rollouts)')
    if loss.get('beta', 0.0):
        preference.check_reference(config, f'loss.beta={loss.beta}')


def bind(config):
    """The loss function with its reference model (beta > 0) built once."""
    ref_logps = None
    if config.get('beta', 0.0):
        if config.get('reference') == preference.ADAPTERS_OFF:
            def ref_logps(apply_fn, params, *args):
                return completion_logps(apply_fn, preference.adapters_off(params), *args, False)
        else:
            ref_model, ref_params = preference.load_reference(config.get('reference', ''))

            def ref_logps(apply_fn, params, *args):
                return completion_logps(ref_model.apply, ref_params, *args, False)

    def bound(apply_fn, params, batch, rngs, config, *, train: bool = True):
        return loss_fn(apply_fn, params, batch, rngs, config, train=train, reference=ref_logps)

    return bound
