"""Autoregressive sampling with a cache: prefill the prompt in one pass, then one token per
step inside one compiled `lax.while_loop`.

The cache is an explicit pytree owned by the model's module (not a flax collection):
`<model module>.init_cache(model, batch, max_len)` and `Model.decode(tokens, positions,
cache) -> (logits, cache)`. For the GPT it is the KV cache (jaxbig.models.gpt); for the
LSTM it is the recurrent state (jaxbig.models.lstm).

Batches of prompts of different lengths are LEFT-padded to the longest: every row writes
the same cache slot at each step, padding slots get position -1 (never attended to, and
the LSTM state skips them), and each row's real tokens get positions 0, 1, ... as if alone.

Streaming: the loop body calls `jax.debug.callback(on_tokens, step, tokens)` (ordered) once
per generated token, so the host prints text while the compiled loop runs; `Streamer`
prints the newly completed UTF-8 text of one row.

Stop: generation of a row ends after its first `stop` token sequence (or eos_id); the
loop exits early once every row is done. `generate` returns the tokens including the stop
sequence; the texts `jaxbig generate` prints, streamed or not, exclude it (the streamer
holds back tokens that may begin the stop sequence until they turn out not to).

The command `jaxbig generate` is jaxbig/commands/generate.py.
"""

from __future__ import annotations

import functools
import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig.models.layout import STACKS

# ----------------------------------------------------------------------------- sampling

def sample_logits(logits, rng, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Draws one token per row. logits [batch, vocab] -> int32 [batch].

    temperature 0 = greedy (argmax). top_k > 0 keeps the k largest logits (ties at the k-th
    value are kept too); top_p < 1 keeps the smallest set of most likely tokens whose
    probability reaches p (the most likely token always). Filters apply to the
    temperature-scaled distribution, top-k first.
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def draw(sample, logits, rng, i):
    """Token i of every row, from logits [batch, vocab]: `rng` is one key for the batch, or
    a key per row ([batch] keys), so that a row's samples do not depend on the rows beside it
    (GRPO's rollouts: the same under any split of the batch)."""
    if rng.ndim == 0:
        return sample(logits, jax.random.fold_in(rng, i))
    keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(rng)
    return jax.vmap(lambda row, k: sample(row[None], k)[0])(logits, keys)


# ----------------------------------------------------------------------------- padding

def left_pad(prompts: list[np.ndarray], pad_id: int = 0, width: int | None = None):
    """Token id arrays of different lengths -> (tokens int32 [batch, P], positions int32
    [batch, P]): left-padded with `pad_id`, positions 0.. on real tokens, -1 on padding.
    P = the longest prompt, or `width` (>= it: a fixed shape for one compilation)."""
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError('every prompt needs at least one token')
    width = max([len(p) for p in prompts] + [width or 0])
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    positions = np.full((len(prompts), width), -1, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        positions[i, width - len(p):] = np.arange(len(p))
    return tokens, positions


def init_cache(model, batch: int, max_len: int):
    """The model family's empty cache (`<family module>.init_cache`); a LoRA-wrapped model
    uses its base model's (the adapters change weights, not the cache's shape)."""
    from jaxbig import lora

    base = lora.unwrap(model)
    return importlib.import_module(type(base).__module__).init_cache(base, batch, max_len)


# ----------------------------------------------------------------------------- the loop

@functools.partial(
    jax.jit,
    static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k', 'top_p', 'stop',
                     'eos_id', 'stream'),
)
def _generate(params, tokens, positions, rng, *, model, max_new_tokens, temperature, top_k,
              top_p, stop, eos_id, stream):
    """tokens, positions int32 [batch, P] -> (generated int32 [batch, max_new_tokens],
    lengths int32 [batch]): tokens after a row finished are eos_id (0 if None). rng: a key,
    or [batch] keys (one per row, see `draw`)."""
    from jaxbig import quantize  # int8 params are dequantised here, inside the compiled step

    params = quantize.dequantize(params)
    batch, width = tokens.shape
    apply = functools.partial(model.apply, {'params': params}, method='decode')
    cache = init_cache(model, batch, width + max_new_tokens)
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    stop_ids = jnp.asarray(stop or (), jnp.int32)
    fill = 0 if eos_id is None else eos_id

    logits, cache = apply(tokens, positions, cache)  # prefill: the whole prompt in one pass
    out = jnp.full((batch, max_new_tokens), fill, jnp.int32)
    lengths = jnp.zeros((batch,), jnp.int32)
    done = jnp.zeros((batch,), bool)

    def emit(i, logits, rng, out, lengths, done):
        """Samples token i from logits [batch, vocab], records it, updates `done`."""
        token = jnp.where(done, fill, draw(sample, logits, rng, i))
        out = out.at[:, i].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        finished = jnp.zeros_like(done)
        if eos_id is not None:
            finished |= token == eos_id
        if stop:
            n = len(stop)
            tail = jax.lax.dynamic_slice_in_dim(jnp.pad(out, ((0, 0), (n, 0))), i + 1, n, 1)
            finished |= jnp.all(tail == stop_ids, axis=-1)
        if stream:
            jax.debug.callback(_stream_callback, i, token, ordered=True)
        return token, out, lengths, done | finished

    next_pos = positions[:, -1] + 1
    token, out, lengths, done = emit(0, logits[:, -1], rng, out, lengths, done)

    def cond(carry):
        i, _, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, cache, out, lengths, done, pos = carry
        logits, cache = apply(token[:, None], pos[:, None], cache)
        token, out, lengths, done = emit(i, logits[:, 0], rng, out, lengths, done)
        return i + 1, token, cache, out, lengths, done, pos + 1

    carry = (jnp.int32(1), token, cache, out, lengths, done, next_pos)
    _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, carry)[:6]
    return out, lengths


sample_loop = _generate  # the loop itself, for callers inside a compiled step (GRPO's rollouts)

_STREAM_TARGET = [None]  # the host-side receiver of streamed tokens (one generate at a time)


def _stream_callback(i, token):
    if _STREAM_TARGET[0] is not None:
        _STREAM_TARGET[0](int(i), np.asarray(token))


def decoding_form(model, params):
    """(model, params) as the decoding loop runs them: LoRA adapters merged into the base
    weights once (not at every step), and a layer-scanned GPT unrolled (`layers/...` stacked
    -> `layers_<i>/...`): inside the loop XLA CPU copies each scanned layer's weights out of
    the stack at every step, which halves decoding speed at GPT-2-small (24 vs 11 tokens/s,
    batch 1). The same function of the same weights: tokens are identical."""
    from jaxbig import lora

    if isinstance(model, lora.LoraModel):
        params, model = lora.merge(params, model.scale), lora.unwrap(model)
    if (type(model).__module__ == 'jaxbig.models.gpt' and model.scan_layers
            and 'layers' in params):
        params = dict(params)
        for name in STACKS:  # `layers` (and a MoE GPT's leading `dense_layers`)
            if name in params:
                stacked = params.pop(name)
                for i in range(jax.tree.leaves(stacked)[0].shape[0]):
                    params[f'{name}_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
        model = model.clone(scan_layers=False)
    return model, params


def generate(model, params, prompts, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop=None, eos_id=None,
             on_tokens=None):
    """Samples continuations of `prompts` (a list of int token arrays, any lengths).

    Returns (tokens int32 [batch, max_new_tokens], lengths int [batch]): row b's
    continuation is tokens[b, :lengths[b]], including the stop sequence / eos that ended
    it. `stop`: a token sequence; `on_tokens(i, tokens [batch])` is called on the host for
    each generated step i while the compiled loop runs (streaming).
    """
    tokens, positions = left_pad([np.asarray(p) for p in prompts])
    model, params = decoding_form(model, params)
    _STREAM_TARGET[0] = on_tokens
    try:
        out, lengths = _generate(
            params, jnp.asarray(tokens), jnp.asarray(positions), jax.random.key(seed),
            model=model, max_new_tokens=max_new_tokens, temperature=float(temperature),
            top_k=int(top_k), top_p=float(top_p),
            stop=tuple(int(t) for t in stop) if stop is not None and len(stop) else None,
            eos_id=eos_id, stream=on_tokens is not None,
        )
        out, lengths = jax.device_get((out, lengths))
    finally:
        jax.effects_barrier()
        _STREAM_TARGET[0] = None
    return np.asarray(out), np.asarray(lengths)


def generate_uncached(model, params, prompt, *, max_new_tokens: int):
    """Greedy reference without a cache: recomputes the full prefix at every step with the
    model's training forward, on a fixed [1, P + max_new_tokens] buffer (causal, so the
    logits at the last real token ignore the zeros after it; one compilation).
    prompt int [P] -> int32 [max_new_tokens]. Slow; for tests and the benchmark."""
    n = len(prompt)
    buf = jnp.zeros((1, n + max_new_tokens), jnp.int32).at[0, :n].set(jnp.asarray(prompt))

    @jax.jit
    def step(i, buf):
        logits = model.apply({'params': params}, buf, train=False)[0]
        token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, n + i - 1, 0, False))
        return buf.at[0, n + i].set(token.astype(jnp.int32))

    for i in range(max_new_tokens):
        buf = step(i, buf)
    return np.asarray(buf[0, n:])


class Streamer:
    """on_tokens for one row: prints each newly completed piece of UTF-8 text to `out`.

    With `stop` (a token sequence), a tail of tokens that could be the start of the stop
    sequence is held back until it is not; the stop sequence itself and anything after it
    are never printed. Call `finish()` at the end to print what is still held back.
    """

    def __init__(self, tokenizer, row: int = 0, out=None, stop=None):
        self.tokenizer, self.row, self.out = tokenizer, row, out or sys.stdout
        self.stop = [] if stop is None else [int(t) for t in stop]
        self.ids, self.printed, self.stopped = [], '', False

    def __call__(self, i, tokens):
        if self.stopped:
            return
        self.ids.append(int(tokens[self.row]))
        n = len(self.stop)
        if n and self.ids[-n:] == self.stop:
            del self.ids[-n:]
            self.stopped = True
            self._print(len(self.ids))
        else:
            self._print(len(self.ids) - self._held())

    def finish(self):
        """Prints the held-back tail (generation ended inside a partial stop match)."""
        self._print(len(self.ids), final=True)

    def _held(self) -> int:
        """Length of the longest tail of ids that is a proper prefix of the stop sequence."""
        for k in range(min(len(self.stop) - 1, len(self.ids)), 0, -1):
            if self.ids[-k:] == self.stop[:k]:
                return k
        return 0

    def _print(self, upto: int, final: bool = False):
        text = self.tokenizer.decode(self.ids[:upto])
        if text.endswith('\ufffd') and not final:  # maybe an incomplete character: wait
            return
        if len(text) > len(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

