"""Generation throughput with and without the KV cache, measured in one run; prints the ratio.

    python benchmarks/generate.py                          # tiny GPT, random weights
    python benchmarks/generate.py --workdir runs/lm        # a trained run's model and params
    python benchmarks/generate.py --size small --batch 4 --prompt-len 64 --new-tokens 256
    python benchmarks/generate.py --transformers   # vs transformers' generate (test extra)

Both paths are greedy and fully compiled (one jit each, timed after a warm-up call):
  cached    jaxbig.generate: prefill the prompt once, then one token per loop step
            attending over the KV cache (O(length) work per token);
  uncached  a lax.fori_loop that re-runs the training forward over the whole fixed-size
            [batch, prompt + new] buffer every step and reads the logits at the last real
            token (O(length^2) work per token: what a model without a cache must do;
            the fixed buffer keeps it one compilation, at up to ~2x the work of a prefix
            that grows, so the ratio overstates by at most that factor).
Both produce the same tokens (checked here). tokens/s counts generated tokens over the batch.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig import generate as gen
from jaxbig import run as run_lib
from jaxbig.models import gpt


def uncached_fn(model, prompt_len: int, new_tokens: int):
    """Compiled greedy generation without a cache: (params, tokens [b, P]) -> [b, new]."""

    @jax.jit
    def run(params, prompt):
        buf = jnp.zeros((prompt.shape[0], prompt_len + new_tokens), jnp.int32)
        buf = buf.at[:, :prompt_len].set(prompt)

        def body(i, buf):
            logits = model.apply({'params': params}, buf, train=False)
            last = jax.lax.dynamic_index_in_dim(logits, prompt_len + i - 1, 1, False)
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_index_in_dim(buf, token, prompt_len + i, 1)

        return jax.lax.fori_loop(0, new_tokens, body, buf)[:, prompt_len:]

    return run


def best_time(fn, repeats: int) -> float:
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', default='', help='a trained run (default: random tiny GPT)')
    parser.add_argument('--size', default='tiny', choices=list(gpt.SIZES))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--prompt-len', type=int, default=32)
    parser.add_argument('--new-tokens', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--transformers', action='store_true',
                        help="instead: jaxbig vs transformers' generate on an imported "
                             'GPT-2-small-shaped model, batch 1 and 8 (benchmarks/hf_interop.py)')
    args = parser.parse_args()
    if args.transformers:
        import hf_interop

        args.tmp = None
        if args.prompt_len == 32 and args.new_tokens == 224:  # the setting by default
            args.prompt_len, args.new_tokens = 128, 128
        return hf_interop.bench_generate(args)

    if args.workdir:
        run = run_lib.load_run(args.workdir)
        model, params = run.model, run.params
    else:
        model = gpt.Model(vocab_size=256, **gpt.SIZES[args.size])
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
    if not isinstance(model, gpt.Model):
        raise SystemExit('the uncached baseline here is the GPT forward; use a gpt run')
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, 256, size=(args.batch, args.prompt_len)).astype(np.int32)
    n = args.new_tokens

    cached_out = []

    def cached():
        out, _ = gen.generate(model, params, list(prompts), max_new_tokens=n)
        cached_out[:] = [out]

    uncached = uncached_fn(model, args.prompt_len, n)
    uncached_out = []

    def run_uncached():
        uncached_out[:] = [np.asarray(uncached(params, jnp.asarray(prompts)))]

    t_cached = best_time(cached, args.repeats)
    t_uncached = best_time(run_uncached, args.repeats)
    same = np.array_equal(cached_out[0], uncached_out[0])
    tokens = args.batch * n
    print(f'model {args.workdir or args.size}: batch {args.batch}, prompt {args.prompt_len}, '
          f'{n} new tokens, devices {jax.devices()[0].platform} x{jax.device_count()}')
    print(f'  with KV cache      {tokens / t_cached:10.1f} tokens/s  ({t_cached:.3f} s)')
    print(f'  without (recompute) {tokens / t_uncached:9.1f} tokens/s  ({t_uncached:.3f} s)')
    print(f'  speedup {t_uncached / t_cached:.1f}x; identical tokens: {same}')


if __name__ == '__main__':
    main()
