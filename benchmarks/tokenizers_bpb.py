"""Validation bits per byte of the same GPT trained on bytes, a byte-level BPE and a
SentencePiece unigram model, at equal steps and batch, measured in one run.

    python benchmarks/tokenizers_bpb.py [--steps 300] [--vocab 1024] [--seq 128] [--json]

Trains both tokenizers on the embedded corpus's training split with `jaxbig tokenizer
train` (`--kind bpe | sentencepiece`, `--vocab-size`), checks that each round-trips the
validation split exactly, then runs `experiments/lm.py:steps=S` once per tokenizer through
the real CLI (`--config.data.tokenizer=...`; the model's vocab follows it) in temporary
workdirs and prints the last `val/loss` (nats per token), `val/bits_per_byte` and the
tokenizer's bytes per token on the validation split. Equal steps and batch mean equal
tokens, so a subword model sees more text (bytes per token times as much) for about the
same compute; bits per byte is what compares the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jaxbig(*args) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'jaxbig', *args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f'jaxbig {" ".join(args)} failed:\n{proc.stderr[-3000:]}')
    return time.perf_counter() - t0


def last(workdir: str, key: str):
    value = None
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
            value = json.loads(line).get(key, value)
    return value


def validation_text(max_docs: int = 200) -> str:
    """The first `max_docs` documents of the LM experiment's validation split, one blank
    line between them (the stream's NUL separators are the byte model's eos, not text)."""
    from jaxbig import config as config_lib
    from jaxbig import data

    cfg = config_lib.load('experiments/lm.py')
    data.prepare(cfg.data)
    pipe = data.build_pipeline(cfg.data, split=cfg.data.val_split, batch_size=1, seed=0)
    docs = pipe.corpus.stream().tobytes().split(b'\0')[:max_docs]
    return b'\n\n'.join(docs).decode('utf-8', errors='replace')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--vocab', type=int, default=1024)
    parser.add_argument('--seq', type=int, default=128)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args()
    from jaxbig.data.text import tokenizers

    text = validation_text()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {'bytes': 'bytes'}
        for kind, file in (('bpe', 'tokenizer.json'), ('sentencepiece', 'tokenizer.model')):
            out = os.path.join(tmp, kind)
            wall = jaxbig('tokenizer', 'train', '--config', 'experiments/lm.py', '--vocab-size',
                          str(args.vocab), '--out', out, '--kind', kind)
            paths[kind] = os.path.join(out, file)
            print(f'{kind}: tokenizer trained in {wall:.0f} s', file=sys.stderr)
        for name, path in paths.items():
            tok = tokenizers.from_config({'tokenizer': path, 'eos_id': -1})
            ids = tok.encode(text)
            exact = tok.decode(ids) == text
            workdir = os.path.join(tmp, f'lm_{name}')
            wall = jaxbig('train', '--config', f'experiments/lm.py:steps={args.steps}',
                          '--workdir', workdir, f'--config.data.tokenizer={path}',
                          f'--config.data.seq_len={args.seq}', '--config.train.eval_every=0')
            rows[name] = {'val/loss': last(workdir, 'val/loss'),
                          'val/bits_per_byte': last(workdir, 'val/bits_per_byte'),
                          'bytes_per_token': len(text.encode('utf-8')) / len(ids),
                          'round_trip_exact': exact, 'wall_s': round(wall, 1)}
            print(f'{name}: {rows[name]}', file=sys.stderr)
    if args.json:
        print(json.dumps(dict(args=vars(args), rows=rows), indent=1))
        return
    print(f'experiments/lm.py:steps={args.steps}, seq {args.seq}, vocab {args.vocab} '
          '(subword tokenizers)')
    print(f'{"tokenizer":14s} {"bytes/token":>11s} {"val nats/token":>14s} '
          f'{"val bits/byte":>13s} {"round trip":>10s} {"wall s":>7s}')
    for name, r in rows.items():
        print(f'{name:14s} {r["bytes_per_token"]:11.2f} {r["val/loss"]:14.3f} '
              f'{r["val/bits_per_byte"]:13.3f} {str(r["round_trip_exact"]):>10s} '
              f'{r["wall_s"]:7.0f}')


if __name__ == '__main__':
    main()
