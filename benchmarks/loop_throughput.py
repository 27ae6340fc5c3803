"""Steps/s of the whole `jaxbig train` loop (input, step, logging), measured in one run:
the default LM on 1 device (also with one update per compiled call instead of its
train.steps_per_call=4, and with host batches built between steps instead of by the
prefetch thread, data.prefetch=0), on 8 simulated CPU devices as data=8 and as fsdp=8, the
CLIP two-tower model, and SimCLR on digits (its two augmented views per example are built
on the host: augmentation-bound) with and without prefetch.

    python benchmarks/loop_throughput.py [--steps 40] [--json]
    python benchmarks/loop_throughput.py --cases prefetch --rounds 2   # on off, off on
    python benchmarks/loop_throughput.py --file-corpus 1e9 --cases 'lm, 1 device$'

`--file-corpus BYTES` writes a JSONL.zst corpus of that many bytes of JSON lines (the
standard library's files, each line one file with its lines shuffled by a seeded RNG so no
two records repeat; `--corpus-dir` keeps it between runs), times the one-time preparation
of it as `data.name='files'` (read, split, tokenize into the memory-mapped token cache),
then runs the LM on it beside the selected cases ('lm, 1 GB zstd JSONL' in the table).

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


def write_corpus(directory: str, size: float) -> str:
    """A JSONL.zst corpus of about `size` uncompressed bytes in `directory` (kept if there)."""
    import random

    import zstandard

    sys.path.insert(0, REPO)
    from jaxbig.data.builders import pystdlib

    path = os.path.join(directory, f'corpus-{int(size)}.jsonl.zst')
    if os.path.exists(path):
        return path
    root = pystdlib.stdlib_root()
    texts = [t for t in (pystdlib.read_text(os.path.join(root, r)) for r in pystdlib.walk_files(
        root, suffix='.py', exclude_dirs=('site-packages', '__pycache__'))) if t]
    rng, written = random.Random(0), 0
    with open(path + '.tmp', 'wb') as raw, zstandard.ZstdCompressor(level=3).stream_writer(
            raw) as out:
        while written < size:
            for text in texts:
                lines = text.split('\n')
                rng.shuffle(lines)
                line = (json.dumps({'text': '\n'.join(lines)}) + '\n').encode()
                out.write(line)
                written += len(line)
                if written >= size:
                    break
    os.replace(path + '.tmp', path)
    return path


def prepare_seconds(corpus: str) -> float:
    """Seconds of the one-time preparation of `corpus` as the LM's data (index, split,
    token cache), in a fresh process."""
    code = ('import time, sys; from jaxbig import cli, data; '
            "c = cli.load_config('experiments/lm.py:data=files', "
            "['--config.data.path=' + sys.argv[1]]); t = time.perf_counter(); "
            'data.prepare(c.data); print(time.perf_counter() - t)')
    out = subprocess.run([sys.executable, '-c', code, corpus], check=True, cwd=REPO,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


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
    parser.add_argument('--file-corpus', type=float, default=0,
                        help='bytes of a generated JSONL.zst corpus to train on too (1e9 = 1 GB)')
    parser.add_argument('--corpus-dir', default='',
                        help='where the corpus is written and kept (default: a temp dir)')
    args = parser.parse_args()
    cases = selected(args.cases)
    corpus_dir = args.corpus_dir or tempfile.mkdtemp(prefix='jaxbig-corpus-')
    extra = {}
    if args.file_corpus:
        corpus = write_corpus(corpus_dir, args.file_corpus)
        extra['prepare_s'] = prepare_seconds(corpus)
        name = f'lm, {args.file_corpus / 1e9:g} GB zstd JSONL'
        cases[name] = ('experiments/lm.py:data=files', [f'data.path={corpus}'], 1)
        extra['corpus'] = dict(path=corpus, compressed_bytes=os.path.getsize(corpus),
                               name=name)
    runs = {name: [] for name in cases}
    for i in range(args.rounds):  # interleaved, every other round in reverse (A B, B A, ...),
        # so a drift in the machine's load favours no case
        for name, case in (list if i % 2 == 0 else reversed)(list(cases.items())):
            runs[name].append(run_case(*case, args.steps))
    results = {name: median_rates(r) for name, r in runs.items()}
    if args.json:
        print(json.dumps(dict(results, **extra)))
        return
    if extra:
        c = extra['corpus']
        print(f"corpus {args.file_corpus:.3g} bytes of JSONL, {c['compressed_bytes'] / 1e6:.0f} "
              f"MB zstd: one-time preparation {extra['prepare_s']:.1f} s")
        if 'lm, 1 device' in results:
            ratio = results[c['name']]['steps_per_s'] / results['lm, 1 device']['steps_per_s']
            print(f"{c['name']} / embedded corpus step rate: {ratio:.3f}x")
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
