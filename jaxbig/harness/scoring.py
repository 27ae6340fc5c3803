"""The device side of the harness: log-likelihoods of continuations and greedy generations
of a decoder LM, batched and length-bucketed so that a whole harness run compiles a handful
of programs.

    Scorer(model, params, *, batch_size, max_length, mesh=None)
      .loglikelihoods([(context ids, continuation ids)]) -> [(sum log p, greedy)]
      .generate([prompt ids], max_new_tokens, eos_id, stop) -> [generated ids]

Conventions are lm-evaluation-harness's Hugging Face backend's (`HFLM._loglikelihood_tokens`):
a row is (context + continuation)[-(max_length + 1):], its input all but the last token, and
the continuation's tokens are scored at the last len(continuation) positions: sum of
log-softmax (float32) and whether every one is the argmax. Rows are sorted longest first,
right-padded to a bucket (the next power of two >= 16, at most max_length) and grouped into
batches of exactly `batch_size` rows (short batches filled with empty rows that are
dropped): one compilation per bucket. Causal attention makes right padding invisible to the
real positions.

Generation prompts are left-truncated to max_length - max_new_tokens, left-padded to a
bucket width and decoded greedily by jaxbig.generate's KV-cache loop (one compilation per
(bucket, max_new_tokens)); a row stops at `eos_id` or at the token sequence `stop`.

With a `mesh` (training's, or one built from the run's config), params are expected in their
shardings and the batch rows are split over the mesh's batch axes (data x fsdp x expert);
`batch_size` is rounded up to a multiple of that product.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MIN_BUCKET = 16


def bucket(length: int, max_length: int) -> int:
    """The padded length of a row of `length` tokens: the next power of two >= MIN_BUCKET,
    at most max_length (and never below length)."""
    return max(length, min(max_length, max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())))


@functools.partial(jax.jit, static_argnames=('model',))
def _score(params, tokens, targets, weights, *, model):
    """tokens, targets int32 [B, L], weights float32 [B, L] (1 on continuation positions)
    -> (sum of target log-probs float32 [B], every weighted target the argmax bool [B])."""
    from jaxbig import quantize

    logits = model.apply({'params': quantize.dequantize(params)}, tokens, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == targets
    return (jnp.sum(picked * weights, axis=-1),
            jnp.all(greedy | (weights == 0), axis=-1))


class Scorer:
    """Scores and generates with one decoder LM (a jaxbig GPT or LSTM, LoRA or int8 too).

    model: the linen model (train=False forward: tokens [B, L] -> logits [B, L, V]).
    params: its params (host arrays, or placed in their shardings under `mesh`).
    batch_size: rows per compiled call. max_length: the longest row the model sees.
    """

    def __init__(self, model, params, *, batch_size: int = 16, max_length: int,
                 mesh=None):
        from jaxbig import parallel

        if max_length < 2:
            raise ValueError(f'max_length={max_length}: must be >= 2')
        self.model, self.params, self.max_length, self.mesh = model, params, max_length, mesh
        ways = parallel.data_parallel_size(mesh) if mesh is not None else 1
        self.batch_size = max(ways, math.ceil(max(1, batch_size) / ways) * ways)
        self._sharding = parallel.batch_sharding(mesh) if mesh is not None else None
        self._decoding = None

    def _place(self, *arrays):
        if self._sharding is None:
            return tuple(jnp.asarray(a) for a in arrays)
        return tuple(jax.device_put(a, self._sharding) for a in arrays)

    # ------------------------------------------------------------------ log-likelihoods

    def loglikelihoods(self, pairs) -> list[tuple[float, bool]]:
        """pairs: [(context ids, continuation ids)], each non-empty (lists of ints) ->
        [(sum of the continuation's log-probabilities in nats, all greedy)] in input order."""
        rows = []
        for context, continuation in pairs:
            if not len(context) or not len(continuation):
                raise ValueError('a log-likelihood request needs a context and a continuation')
            if len(continuation) > self.max_length:
                raise ValueError(f'a continuation of {len(continuation)} tokens is longer than '
                                 f'max_length={self.max_length} (the context the model is '
                                 'scored with: --max-length, or the run\'s data.seq_len)')
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((whole[:-1], whole[1:], len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            width = bucket(len(rows[chosen[0]][0]), self.max_length)
            tokens = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            weights = np.zeros((self.batch_size, width), np.float32)
            for r, i in enumerate(chosen):
                inp, tgt, n = rows[i]
                tokens[r, :len(inp)], targets[r, :len(tgt)] = inp, tgt
                weights[r, len(inp) - n:len(inp)] = 1.0
            placed = self._place(tokens, targets, weights)
            sums, greedy = jax.device_get(_score(self.params, *placed, model=self.model))
            for r, i in enumerate(chosen):
                out[i] = (float(sums[r]), bool(greedy[r]))
        return out

    # ------------------------------------------------------------------ generation

    def generate(self, prompts, *, max_new_tokens: int, eos_id=None, stop=None) -> list[list[int]]:
        """Greedy continuations of `prompts` (lists of ids): each row's tokens up to (not
        including) its eos; a `stop` token sequence that ended a row is kept (the caller
        cuts text at its stop strings)."""
        from jaxbig import generate as gen

        if max_new_tokens < 1 or max_new_tokens >= self.max_length:
            raise ValueError(f'max_gen_toks={max_new_tokens}: must be in [1, max_length='
                             f'{self.max_length})')
        if self._decoding is None:
            self._decoding = gen.decoding_form(self.model, self.params)
        model, params = self._decoding
        keep = self.max_length - max_new_tokens
        prompts = [list(p)[-keep:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            batch = [prompts[i] for i in chosen]
            batch += [[0]] * (self.batch_size - len(batch))
            width = bucket(max(len(p) for p in batch), keep)
            tokens, positions = gen.left_pad([np.asarray(p) for p in batch], width=width)
            tokens, positions = self._place(tokens, positions)
            generated, lengths = jax.device_get(gen.sample_loop(
                params, tokens, positions, jax.random.key(0), model=model,
                max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0,
                stop=tuple(stop) if stop else None, eos_id=eos_id, stream=False))
            for r, i in enumerate(chosen):
                ids = [int(t) for t in generated[r, :lengths[r]]]
                if eos_id is not None and ids and ids[-1] == eos_id:
                    ids = ids[:-1]
                out[i] = ids
        return out
