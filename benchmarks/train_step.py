"""LM train-step throughput and MFU, jaxbig against a PyTorch reference, in one run.

    python benchmarks/train_step.py                              # tiny (the default experiment)
    python benchmarks/train_step.py --size gpt2_small --batch 4 --seq 512 --steps 3
    python benchmarks/train_step.py --torch                      # + PyTorch eager / compiled
    python benchmarks/train_step.py --json --override model.remat=dots   # one JSON line
    python benchmarks/train_step.py --compare model.remat=dots --compare model.attention=xla

The jaxbig step is built exactly as `jaxbig train` builds it (experiments/lm.py -> model,
loss, optax chain -> step.make_train_step -> jit with donation), fed a fixed random batch
so input time is excluded. `--torch` adds benchmarks/torch_gpt.py, the identical model
(same architecture and parameter count, checked and printed) with the same optimizer,
in eager mode and under `torch.compile` (needs `pip install -e '.[bench]'`), timed in a
child process of its own with the same environment, so neither framework shares a process
with the other's threads. Like `jaxbig train`, the script first restarts itself with
jaxbig's allocator setting (GLIBC_TUNABLES, see jaxbig/runtime/xla_defaults.py; the child
inherits it); JAXBIG_XLA_DEFAULTS=0 measures both without jaxbig's defaults.

Model FLOPs follow MaxText (`gpt.flops_per_token`). The peak is a float32 2048^2 matmul
timed in the same process, so MFU and the jaxbig/PyTorch ratios are comparable across
runs. Every figure is a best-of-`--repeats` mean over `--steps` steps after warm-up.
Nothing here is a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbig import config as config_lib
from jaxbig import experiment
from jaxbig import losses, models, optim
from jaxbig import step as step_lib
from jaxbig.models import gpt
from jaxbig.runtime import xla_defaults

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'experiments')


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """float32 FLOP/s of a jitted n x n matmul (best of `repeats`)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def random_batch(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """int32 [batch, seq + 1] random bytes (never 0, the document separator)."""
    return np.random.default_rng(seed).integers(1, 256, size=(batch, seq + 1)).astype(np.int32)


def build_lm_step(size: str, batch: int, seq: int, overrides=(), *, abstract: bool = False):
    """(jitted train_step, state, batch, config, model) through the real config -> step path.
    With the config's train.steps_per_call = k > 1, one call runs k updates
    (step.multi_step) on the batch stacked k times, as `jaxbig train` runs it; `updates`
    says k. abstract: state and batch are ShapeDtypeStructs (enough to lower and compile)."""
    config = config_lib.load(f'{EXPERIMENTS}/lm.py:size={size},batch={batch},seq={seq}')
    experiment.resolve_auto(config_lib.apply_overrides(config, overrides))
    model = models.from_config(config)
    loss_module = losses.get_loss_module(config.loss.name)
    tx, schedule = optim.build_optimizer(config.optimizer, config.train.steps)
    tokens = random_batch(batch, seq)
    data = {'inputs': jnp.asarray(tokens[:, :-1]), 'targets': jnp.asarray(tokens[:, 1:]),
            'mask': jnp.ones((batch, seq), jnp.float32)}
    init = step_lib.init_fn(model, tx, loss_module.model_inputs(
        jax.tree.map(lambda x: x[:1], data)), seed=0)
    state = jax.eval_shape(init) if abstract else jax.jit(init)()
    fn = step_lib.make_train_step(model, losses.bind(loss_module, config.loss), config.loss, tx,
                                  schedule)
    if updates(config) > 1:
        fn = step_lib.multi_step(fn)
        data = jax.tree.map(lambda x: jnp.stack([x] * updates(config)), data)
    return jax.jit(fn, donate_argnums=(0,)), state, data, config, model


def updates(config) -> int:
    """Updates per call of build_lm_step's train_step (train.steps_per_call)."""
    return config.train.get('steps_per_call', 1)


def run_steps(step, state, batch, calls: int, per_call: int = 1):
    """Runs `calls` calls of `per_call` updates each; returns (mean seconds per update, the
    final state: the state passed in may have been donated)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        state, out = step(state, batch)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / (calls * per_call), state


def time_loop(step, state, batch, calls: int, repeats: int,
              per_call: int = 1) -> tuple[float, float]:
    """(first-call seconds incl. compile, best mean seconds per update). step(state, batch)
    runs `per_call` updates."""
    t0 = time.perf_counter()
    _, state = run_steps(step, state, batch, 1)
    first = time.perf_counter() - t0
    _, state = run_steps(step, state, batch, 1)  # warm-up
    best = float('inf')
    for _ in range(repeats):
        seconds, state = run_steps(step, state, batch, calls, per_call)
        best = min(best, seconds)
    return first, best


def time_jaxbig(size, batch, seq, steps, repeats, overrides=()) -> dict:
    """`steps` updates per repeat (rounded up to whole calls of train.steps_per_call)."""
    train_step, state, data, config, model = build_lm_step(size, batch, seq, overrides)
    k = updates(config)
    compile_s, step_s = time_loop(train_step, state, data, -(-steps // k), repeats, k)
    return dict(params=gpt.count_params(state.params), compile_s=compile_s, step_s=step_s,
                flops_per_token=gpt.flops_per_token(model, seq), steps_per_call=k)


def compare_jaxbig(size, batch, seq, steps, rounds, variants) -> list[float]:
    """Best seconds per update of each variant (a list of overrides), timed in interleaved
    rounds (A B C A B C ...) in this one process, so slow drifts of the machine's speed
    hit every variant alike. Each round times `steps` updates of every variant (rounded up
    to whole calls of its train.steps_per_call)."""
    built = []
    for overrides in variants:
        step, state, data, config, _ = build_lm_step(size, batch, seq, overrides)
        _, state = run_steps(step, state, data, 2)  # compile and warm up
        built.append([step, state, data, updates(config)])
    best = [float('inf')] * len(variants)
    for _ in range(rounds):
        for i, (step, state, data, k) in enumerate(built):
            seconds, built[i][1] = run_steps(step, state, data, -(-steps // k), k)
            best[i] = min(best[i], seconds)
    return best


def time_torch(size, batch, seq, steps, repeats, compiled: bool) -> dict:
    """The PyTorch reference on the same shapes; torch's own threads = this process's cores."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_gpt

    torch.manual_seed(0)
    model = torch_gpt.GPT(256, **gpt.SIZES[size], max_len=seq)
    step = torch_gpt.make_train_step(model, compile_step=compiled)
    tokens = torch.from_numpy(random_batch(batch, seq).astype(np.int64))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def run(_, batch):
        return None, step(*batch)

    first, step_s = time_loop(run, None, (inputs, targets), steps, repeats)
    return dict(params=torch_gpt.count_params(model), compile_s=first, step_s=step_s,
                threads=torch.get_num_threads(), version=torch.__version__)


def torch_in_child(script: str, argv: list[str]) -> dict:
    """`script --torch-only argv --json` in a child process, parsed: the PyTorch reference
    timed in a process of its own (no JAX threads beside it) with this process's environment
    (the same allocator setting as jaxbig's step)."""
    argv = [a for a in argv if a not in ('--torch', '--json')]
    out = subprocess.run([sys.executable, script, '--torch-only', '--json', *argv],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='tiny', choices=list(gpt.SIZES))
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--seq', type=int, default=128)
    parser.add_argument('--steps', type=int, default=5,
                        help='updates per timed repeat (rounded up to whole calls of '
                             'train.steps_per_call)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--torch', action='store_true', help='also time the PyTorch reference')
    parser.add_argument('--no-compile', action='store_true',
                        help='with --torch: skip torch.compile (its first call takes minutes)')
    parser.add_argument('--json', action='store_true', help='print one JSON object only')
    parser.add_argument('--override', action='append', default=[],
                        help='config override a.b=v (repeatable)')
    parser.add_argument('--compare', action='append', default=[], metavar='OVERRIDES',
                        help="a variant: space-separated overrides added to --override's "
                             '(repeatable); times the baseline and each variant in '
                             'interleaved rounds in this process and prints each one\'s '
                             'speed relative to the baseline')
    parser.add_argument('--rounds', type=int, default=3, help='with --compare')
    parser.add_argument('--torch-only', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = [tuple(o.split('=', 1)) for o in args.override]
    if args.compare:
        return compare_main(args, overrides)
    if args.torch_only:  # the child process of --torch: one JSON line of PyTorch runs
        modes = (('torch_eager', False),) + (() if args.no_compile else (('torch_compile', True),))
        print(json.dumps({name: time_torch(args.size, args.batch, args.seq, args.steps,
                                           args.repeats, compiled) for name, compiled in modes}))
        return
    tokens = args.batch * args.seq
    peak = matmul_peak_flops()
    runs = {'jaxbig': time_jaxbig(args.size, args.batch, args.seq, args.steps, args.repeats,
                                  overrides)}
    flops = runs['jaxbig']['flops_per_token'] * tokens
    if args.torch:
        runs.update(torch_in_child(__file__, sys.argv[1:]))
        for name in runs:
            if runs[name]['params'] != runs['jaxbig']['params']:
                raise SystemExit(f'{name} has {runs[name]["params"]:,} parameters, jaxbig '
                                 f'{runs["jaxbig"]["params"]:,}: not the same model')
    for r in runs.values():
        r.update(tokens_per_s=tokens / r['step_s'], model_flops_per_s=flops / r['step_s'],
                 mfu=flops / r['step_s'] / peak)
    result = dict(size=args.size, batch=args.batch, seq=args.seq, overrides=args.override,
                  jax=jax.__version__, devices=jax.device_count(), peak_flops=peak, runs=runs)
    if args.json:
        print(json.dumps(result))
        return
    j = runs['jaxbig']
    print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; '
          f'matmul peak (float32, 2048^2): {peak / 1e9:.1f} GFLOP/s')
    print(f'model {args.size}: {j["params"]:,} params, batch {args.batch} x seq {args.seq}, '
          f'{j["flops_per_token"] * tokens / 1e9:.2f} GFLOP per step (MaxText counting)'
          + (f', overrides {args.override}' if args.override else ''))
    print(f'{"":14s} {"step ms":>9s} {"tokens/s":>10s} {"GFLOP/s":>8s} {"MFU":>6s} '
          f'{"first call s":>12s}')
    for name, r in runs.items():
        print(f'{name:14s} {r["step_s"] * 1e3:9.1f} {r["tokens_per_s"]:10,.0f} '
              f'{r["model_flops_per_s"] / 1e9:8.1f} {r["mfu"]:6.1%} {r["compile_s"]:12.1f}')
    for name in runs:
        if name != 'jaxbig':
            print(f'jaxbig / {name}: {j["tokens_per_s"] / runs[name]["tokens_per_s"]:.2f}x '
                  'tokens/s')


def compare_main(args, overrides):
    variants = [overrides] + [overrides + [tuple(o.split('=', 1)) for o in c.split()]
                              for c in args.compare]
    best = compare_jaxbig(args.size, args.batch, args.seq, args.steps, args.rounds, variants)
    result = dict(size=args.size, batch=args.batch, seq=args.seq, overrides=args.override,
                  baseline_s=best[0], rounds=args.rounds,
                  variants=[dict(compare=c, step_s=t, speedup=best[0] / t)
                            for c, t in zip(args.compare, best[1:])])
    if args.json:
        print(json.dumps(result))
        return
    print(f'{args.size}, batch {args.batch} x seq {args.seq}, best of {args.rounds} interleaved '
          f'rounds of {args.steps} steps' + (f', overrides {args.override}' if overrides else ''))
    print(f'{"baseline":40s} {best[0] * 1e3:9.1f} ms')
    for v in result['variants']:
        print(f'{v["compare"]:40s} {v["step_s"] * 1e3:9.1f} ms  {v["speedup"] - 1:+.1%} speed')


if __name__ == '__main__':
    xla_defaults.restart_with_malloc_defaults()  # as `jaxbig train` runs (jaxbig/runtime/)
    main()
