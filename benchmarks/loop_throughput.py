"""Steps/s of the whole `jaxbig train` loop (input, step, logging), measured in one run:
the default LM on 1 device (also with one update per compiled call instead of its
train.steps_per_call=4, and with host batches built between steps instead of by the
prefetch thread, data.prefetch=0), on 8 simulated CPU devices as data=8 and as fsdp=8, the
CLIP two-tower model, and SimCLR on digits (its two augmented views per example are built
on the host: augmentation-bound) with and without prefetch.

    python benchmarks/loop_throughput.py [--steps 40] [--json]
    python benchmarks/loop_throughput.py --cases prefetch --rounds 2   # on off, off on

Each case is a real CLI run in a temporary workdir; the figure is the median of the
`train/steps_per_sec` rows of metrics.jsonl after the first (which holds the compile).
Evaluation time is excluded by the loop itself. On CPU, 8 simulated devices share the same
2 cores: the data vs fsdp comparison measures the sharding overhead (all-gathers of the
parameters, reduce-scatters of the gradients), not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'lm, 1 device': ('experiments/lm.py', [], 1),
    'lm, 1 device, 1 update per call': ('experiments/lm.py', ['train.steps_per_call=1'], 1),
    'lm, 8 devices, data=8': ('experiments/lm.py', ['parallel.data=8'], 8),
    'lm, 8 devices, fsdp=8': ('experiments/lm.py', ['parallel.data=1', 'parallel.fsdp=8'], 8),
    'clip two-tower, 1 device': ('experiments/clip.py', [], 1),
    'lm, 1 device, prefetch off': ('experiments/lm.py', ['data.prefetch=0'], 1),
    'simclr digits, 1 device': ('experiments/simclr.py:data=digits', [], 1),
    'simclr digits, 1 device, prefetch off': ('experiments/simclr.py:data=digits',
                                              ['data.prefetch=0'], 1),
}
# (name, with prefetch (the default data.prefetch=2), without): ratios printed at the end
PREFETCH_PAIRS = [('lm', 'lm, 1 device', 'lm, 1 device, prefetch off'),
                  ('simclr digits', 'simclr digits, 1 device',
                   'simclr digits, 1 device, prefetch off')]


def run_case(config: str, overrides: list[str], devices: int, steps: int) -> dict:
    env = dict(os.environ)
    if devices > 1:
        env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                            f' --xla_force_host_platform_device_count={devices}').strip()
    flags = [f'train.steps={steps}', f'train.log_every={max(steps // 5, 1)}',
             'train.checkpoint_every=0', f'train.eval_every={steps}', *overrides]
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, '-m', 'jaxbig', 'train', '--config', config, '--workdir', workdir,
               *(f'--config.{f}' for f in flags)]
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            rows = [json.loads(line) for line in f]
    rates = [r['train/steps_per_sec'] for r in rows if 'train/steps_per_sec' in r][1:]
    tokens = [r['train/tokens_per_sec'] for r in rows if 'train/tokens_per_sec' in r][1:]
    return dict(steps_per_s=statistics.median(rates),
                tokens_per_s=statistics.median(tokens) if tokens else None)


def selected(pattern: str) -> dict:
    """CASES whose name matches the regular expression `pattern` ('' = all); 'prefetch' =
    the PREFETCH_PAIRS cases."""
    if pattern == 'prefetch':
        return {name: CASES[name] for _, *pair in PREFETCH_PAIRS for name in pair}
    return {name: case for name, case in CASES.items() if re.search(pattern, name)}


def median_rates(runs: list[dict]) -> dict:
    """Several rounds of one case -> the median of each figure."""
    tokens = [r['tokens_per_s'] for r in runs if r['tokens_per_s']]
    return dict(steps_per_s=statistics.median(r['steps_per_s'] for r in runs),
                tokens_per_s=statistics.median(tokens) if tokens else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--cases', default='',
                        help="regular expression of case names, or 'prefetch'")
    parser.add_argument('--rounds', type=int, default=1,
                        help='runs of each case, interleaved (medians reported)')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()
    cases = selected(args.cases)
    runs = {name: [] for name in cases}
    for i in range(args.rounds):  # interleaved, every other round in reverse (A B, B A, ...),
        # so a drift in the machine's load favours no case
        for name, case in (list if i % 2 == 0 else reversed)(list(cases.items())):
            runs[name].append(run_case(*case, args.steps))
    results = {name: median_rates(r) for name, r in runs.items()}
    if args.json:
        print(json.dumps(results))
        return
    for name, r in results.items():
        tok = f'{r["tokens_per_s"]:10,.0f} tokens/s' if r['tokens_per_s'] else ''
        print(f'{name:38s} {r["steps_per_s"]:7.2f} steps/s {tok}')
    if all(f'lm, 8 devices, {k}' in results for k in ('data=8', 'fsdp=8')):
        data, fsdp = (results[f'lm, 8 devices, {k}']['steps_per_s'] for k in ('data=8', 'fsdp=8'))
        print(f'fsdp=8 / data=8 step rate on 8 simulated devices: {fsdp / data:.2f}x')
    for label, on, off in PREFETCH_PAIRS:
        if on in results and off in results:
            ratio = results[on]['steps_per_s'] / results[off]['steps_per_s']
            print(f'{label}: prefetch (data.prefetch=2) / off (0) step rate: {ratio:.2f}x')


if __name__ == '__main__':
    main()
