"""`features` vs `linear_probe` fine-tuning speed, measured in one run.

    python benchmarks/finetune_modes.py [--steps 200]

Pretrains a small SimCLR backbone on digits for a few steps (embedded data, offline), then
trains the same linear head on it in both modes through the real CLI and prints each mode's
train steps/s (from metrics.jsonl, evaluation time excluded), the ratio, the one-off
embedding cost of `features` mode, and both validation accuracies.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(*args):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'jaxbig', 'train', *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def last_row(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, 'simclr')
        run('--config', 'experiments/simclr.py:data=digits,steps=20,batch=128', '--workdir', pre,
            '--config.train.eval_every=0')
        rows, walls = {}, {}
        for mode in ('linear_probe', 'features'):
            workdir = os.path.join(tmp, mode)
            walls[mode] = run('--config', f'experiments/finetune_image.py:init={pre},mode={mode},'
                              f'steps={args.steps}', '--workdir', workdir,
                              '--config.train.eval_every=0', '--config.train.log_every=50')
            rows[mode] = last_row(workdir)
    for mode, row in rows.items():
        print(f'{mode:13s} {row["train/steps_per_sec"]:8.1f} steps/s   wall {walls[mode]:6.1f} s'
              f'   val/accuracy {row["val/accuracy"]:.3f}')
    ratio = rows['features']['train/steps_per_sec'] / rows['linear_probe']['train/steps_per_sec']
    print(f'features / linear_probe steps/s: {ratio:.1f}x')


if __name__ == '__main__':
    main()
