"""Regenerates benchmarks/RESULTS.md: every figure in it is measured by this run.

    python benchmarks/results.py                 # ~40 min on a 2-core CPU; needs '.[bench]'
    python benchmarks/results.py --quick         # tiny model only, no torch.compile

Runs, each in a fresh process (so XLA flags can differ): the jaxbig train step against the
PyTorch reference at two sizes (train_step.py --torch), one layer's pieces against PyTorch
(layer_parts.py), each candidate change in `CHANGES` against the current defaults measured
in the same invocation, the projection-layout microbenchmark (matmul_layout.py), compile
time against depth (compile_time.py) and the whole-loop throughput cases
(loop_throughput.py). A change's prediction is written before it is measured; its effect
and verdict come from the numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {'tiny': dict(batch=32, seq=128), 'gpt2_small': dict(batch=4, seq=512)}
sys.path.insert(0, os.path.dirname(HERE))
from jaxbig.runtime import xla_defaults  # noqa: E402

# the allocator setting every jaxbig process here runs with (jaxbig/runtime/xla_defaults.py)
TUNABLES = xla_defaults.malloc_tunables(os.environ) or os.environ.get('GLIBC_TUNABLES', '')
# jaxbig's XLA flag off (JAXBIG_XLA_DEFAULTS=0 turns all its defaults off), its allocator
# setting kept by naming it explicitly
YNN_ON = {'JAXBIG_XLA_DEFAULTS': '0', 'GLIBC_TUNABLES': TUNABLES}
HUGE_PAGES_OFF = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}  # glibc's default; a user's wins

# (size, name, prediction, config overrides, environment), each against the current defaults.
# Override-only changes of one size are timed in one process, in interleaved rounds with the
# baseline (train_step.py --compare); a change of environment (XLA flags, appended to
# XLA_FLAGS; other variables, set) needs its own processes, alternated with baseline ones.
CHANGES = [
    ('tiny', 'one [seq, seq] attention product instead of 2 query blocks',
     'slower: computes and masks the logits of the upper-right quarter',
     ['model.attention_blocks=1'], ''),
    ('tiny', '4 query blocks of 32 instead of 2 of 64',
     'about the same: skips 1/8 more logits, but in smaller matmuls',
     ['model.attention_blocks=4'], ''),
    ('tiny', 'attention via jax.nn.dot_product_attention (xla)',
     'slower: its CPU path materialises a mask and an unfused softmax over all [seq, seq]',
     ['model.attention=xla'], ''),
    ('tiny', 'nn.scan over layers instead of unrolled',
     'slower at 4 layers: scan carries stacked params through a while loop',
     ['model.scan_layers=true'], ''),
    ('tiny', "remat='dots'", 'slower: recomputes elementwise work, memory is not the limit',
     ['model.remat=dots'], ''),
    ('tiny', "glibc malloc without transparent huge pages (glibc's default; jaxbig sets "
     'glibc.malloc.hugetlb=1)',
     "slower: XLA maps its 256 MB buffer of the step's temporaries afresh on every call, "
     '65,000 page faults per step in 4 KB pages', [], HUGE_PAGES_OFF),
    ('tiny', "XLA: YNNPACK fusions on (XLA's default; jaxbig turns them off)",
     'slower: YNN runs the small matmuls and elementwise fusions slower than Eigen + XLA loops',
     [], YNN_ON),
    ('tiny', 'one update per compiled call (train.steps_per_call=1 instead of 4)',
     "slower: each call maps and zeroes XLA's 256 MB of temporaries afresh and is dispatched "
     'from Python; 4 updates per call pay that once', ['train.steps_per_call=1'], ''),
    ('tiny', 'XLA: concurrency-optimised scheduler off',
     'unknown: fewer ops run side by side on the 2 cores', [],
     {'XLA_FLAGS': '--xla_cpu_enable_concurrency_optimized_scheduler=false'}),
    ('gpt2_small', "remat='none' instead of 'dots'",
     'slower: every saved activation is written, then read back in the backward pass',
     ['model.remat=none'], ''),
    ('gpt2_small', 'one update per compiled call (train.steps_per_call=1 instead of 4)',
     'slightly slower: the per-call costs are a few % of a 7.5 s step',
     ['train.steps_per_call=1'], ''),
    ('gpt2_small', 'one [seq, seq] attention product instead of 4 query blocks',
     'slower: 8/5 of the logits, and the [512, 512] softmax', ['model.attention_blocks=1'], ''),
    ('gpt2_small', 'attention via jax.nn.dot_product_attention (xla)', 'slower, as at tiny',
     ['model.attention=xla'], ''),
    ('gpt2_small', "Adam's first moment in bfloat16 (optimizer.mu_dtype)",
     'about the same: the optimizer is a few % of the step; saves 1/4 of its state memory',
     ['optimizer.mu_dtype=bfloat16'], ''),
    ('gpt2_small', "glibc malloc without transparent huge pages (glibc's default)",
     'about the same: 8 s of compute per step dwarfs the page faults', [], HUGE_PAGES_OFF),
    ('gpt2_small', "XLA: YNNPACK fusions on (XLA's default; jaxbig turns them off)",
     'about the same: large matmuls run near peak either way', [], YNN_ON),
]


def run_json(script: str, *args: str, env_change: dict | None = None) -> dict:
    env = dict(os.environ)
    for key, value in (env_change or {}).items():
        env[key] = (env.get(key, '') + ' ' + value).strip() if key == 'XLA_FLAGS' else value
    out = subprocess.run([sys.executable, os.path.join(HERE, script), '--json', *args],
                         check=True, env=env, capture_output=True, text=True, cwd=HERE).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_args(size: str, overrides=(), steps: int = 8, repeats: int = 3) -> list[str]:
    """train_step.py arguments; gpt2_small times one call of 4 updates per repeat."""
    shape = SHAPES[size]
    args = ['--size', size, '--batch', str(shape['batch']), '--seq', str(shape['seq']),
            '--steps', str(steps if size == 'tiny' else 4),
            '--repeats', str(repeats if size == 'tiny' else min(repeats, 2))]
    return args + [a for o in overrides for a in ('--override', o)]


def headline(size: str, compiled: bool) -> tuple[dict, list[str]]:
    r = run_json('train_step.py', *step_args(size), '--torch',
                 *([] if compiled else ['--no-compile']))
    rows = [f'### {size}: batch {r["batch"]} x seq {r["seq"]}, '
            f'{r["runs"]["jaxbig"]["params"]:,} parameters (same in both frameworks)', '',
            f'Matmul peak measured in the same run: {r["peak_flops"] / 1e9:.0f} GFLOP/s '
            '(float32 2048^2).', '',
            '| implementation | step | tokens/s | model GFLOP/s | MFU | jaxbig / this |',
            '|---|---|---|---|---|---|']
    j = r['runs']['jaxbig']
    for name, x in r['runs'].items():
        ratio = '' if name == 'jaxbig' else f'{j["tokens_per_s"] / x["tokens_per_s"]:.2f}x'
        rows.append(f'| {name} | {x["step_s"] * 1e3:,.0f} ms | {x["tokens_per_s"]:,.0f} | '
                    f'{x["model_flops_per_s"] / 1e9:.1f} | {x["mfu"]:.1%} | {ratio} |')
    return r, rows + ['']


def changes(sizes) -> list[str]:
    rows = ['| size | change | prediction | baseline | with change | effect | verdict |',
            '|---|---|---|---|---|---|---|']
    for size in sizes:
        picked = [c for c in CHANGES if c[0] == size]
        rounds = 3 if size == 'tiny' else 2
        env_rounds = 3 if size == 'tiny' else 1  # alternated processes: 1 round = 2 processes
        measured = {}
        compare = [c for c in picked if not c[4]]
        if compare:
            r = run_json('train_step.py', *step_args(size), '--rounds', str(rounds),
                         *[a for c in compare for a in ('--compare', ' '.join(c[3]))])
            for c, v in zip(compare, r['variants']):
                measured[c[1]] = (r['baseline_s'], v['step_s'])
        for c in picked:
            if c[4]:  # alternate baseline and changed-environment processes; best of each
                base = new = float('inf')
                for _ in range(env_rounds):
                    base = min(base, run_json('train_step.py', *step_args(size, repeats=2))
                               ['runs']['jaxbig']['step_s'])
                    new = min(new, run_json('train_step.py', *step_args(size, c[3], repeats=2),
                                            env_change=c[4])['runs']['jaxbig']['step_s'])
                measured[c[1]] = (base, new)
        for _, name, prediction, _, _ in picked:
            base, new = measured[name]
            effect = base / new - 1
            verdict = 'pays' if effect > 0.03 else ('costs' if effect < -0.03 else 'no change')
            rows.append(f'| {size} | {name} | {prediction} | {base * 1e3:,.0f} ms | '
                        f'{new * 1e3:,.0f} ms | {effect:+.0%} speed | {verdict} |')
    return rows + ['']


def layout_section() -> list[str]:
    r = run_json('matmul_layout.py')
    rows = ['SwiGLU MLP fwd+bwd on x [batch, seq, embed], same weights and results '
            "(flax nn.Dense's 3-D dot_general vs layers.Linear's one 2-D matmul):", '',
            '| shape | 3-D dot_general | 2-D matmul | 2-D speedup |', '|---|---|---|---|']
    for name, x in r.items():
        b, s, e, m = x['shape']
        rows.append(f'| {name}: x [{b}, {s}, {e}], mlp {m} | {x["dot_general_3d"]:,.1f} ms | '
                    f'{x["matmul_2d"]:,.1f} ms | {x["speedup"]:.2f}x |')
    return rows + ['']


def parts_section() -> list[str]:
    r = run_json('layer_parts.py')
    rows = ['One layer, forward + backward, at the training shapes above:', '',
            '| size | piece | jaxbig | PyTorch eager | jaxbig / PyTorch speed |',
            '|---|---|---|---|---|']
    for size, x in r.items():
        for name, p in x['pieces'].items():
            rows.append(f'| {size} | {name} | {p["jaxbig_ms"]:,.1f} ms | {p["torch_ms"]:,.1f} ms '
                        f'| {p["ratio"]:.2f}x |')
    return rows + ['']


def compile_section(size: str, layers: list[int]) -> list[str]:
    r = run_json('compile_time.py', '--size', size, '--layers', *map(str, layers))
    rows = [f'Train-step compile seconds at {size} width (batch 1 x seq 128):', '',
            '| layers | nn.scan | unrolled |', '|---|---|---|']
    rows += [f'| {x["layers"]} | {x["scan_s"]:.1f} s | {x["unrolled_s"]:.1f} s |'
             for x in r['rows']]
    return rows + ['']


def loop_section() -> list[str]:
    r = run_json('loop_throughput.py')
    rows = ['| case | steps/s | tokens/s |', '|---|---|---|']
    for name, x in r.items():
        tokens = f'{x["tokens_per_s"]:,.0f}' if x['tokens_per_s'] else '-'
        rows.append(f'| {name} | {x["steps_per_s"]:.2f} | {tokens} |')
    return rows + ['']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--out', default=os.path.join(HERE, 'RESULTS.md'))
    args = parser.parse_args()
    sizes = ['tiny'] if args.quick else ['tiny', 'gpt2_small']
    import jax

    lines = ['# Measured results', '',
             f'Written by `python benchmarks/results.py{" --quick" if args.quick else ""}` on '
             f'{datetime.date.today()}: {platform.machine()}, {os.cpu_count()} cores, '
             f'Python {platform.python_version()}, jax {jax.__version__}, float32, one CPU '
             'device unless stated. Every process runs with jaxbig\'s defaults '
             f'(jaxbig/runtime/xla_defaults.py): GLIBC_TUNABLES={TUNABLES or "unset"}, '
             'YNNPACK fusions off; PyTorch is timed in its own process with the same '
             'environment. Ratios compare numbers measured in the same invocation; '
             'absolute figures move with the load on the machine.', '',
             '## jaxbig against PyTorch, identical model (train_step.py --torch)', '']
    for size in sizes:
        lines += headline(size, compiled=not args.quick)[1]
    if not args.quick:
        lines += ['## Where the time goes: one layer against PyTorch (layer_parts.py)', '']
        lines += parts_section()
    lines += ['## Candidate changes, each against the current defaults in the same invocation',
              '', 'A row that "costs" confirms the default it departs from.', '']
    lines += changes(sizes)
    lines += ['## Weight layout of the projections (matmul_layout.py)', '']
    lines += layout_section()
    lines += ['## Compile time against depth (compile_time.py)', '']
    lines += compile_section(sizes[-1], [2, 4, 8, 12] if not args.quick else [2, 4, 8])
    lines += ['## The whole loop (loop_throughput.py)', '']
    lines += loop_section()
    notes = os.path.join(HERE, 'RESULTS_NOTES.md')
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read()]
    with open(args.out, 'w') as f:
        f.write('\n'.join(lines).rstrip() + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
