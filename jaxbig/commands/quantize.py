"""`jaxbig quantize --workdir RUN [--step N] [--num-batches K]`:
the int8 weight-only quantization report of a run, kernel bytes and validation loss, float32
against int8 (jaxbig.quantize.report).

Keeps its own parser: jaxbig/cli.py hands `jaxbig quantize ARGS` to `main(ARGS, prog='jaxbig
quantize')`, so help, usage errors (status 2) and exits are the same in both forms.
"""

from __future__ import annotations

import argparse

from jaxbig import quantize

PROG = 'jaxbig quantize'
DESCRIPTION = 'int8 weight-only quantization report'


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument('--workdir', required=True, help='a training workdir')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    parser.add_argument('--num-batches', type=int, default=0, help='0 = evals.val.num_batches')
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parses `argv` (default: sys.argv[1:]), prints the report; returns 0. Errors in the run
    (no workdir, no checkpoint) propagate: the caller prints them (jaxbig.cli.guarded)."""
    args = build_parser(prog).parse_args(argv)
    r = quantize.report(args.workdir, args.step, args.num_batches)
    print(f"{args.workdir} step {r['step']}: kernel bytes {r['kernel_bytes_float']:,} float32 -> "
          f"{r['kernel_bytes_int8']:,} int8+scales ({r['kernel_bytes_ratio']:.2f}x smaller)")
    print(f"validation loss {r['val_loss_float']:.4f} -> {r['val_loss_int8']:.4f} "
          f"({100 * r['val_loss_change']:+.3f}%)")
    return 0
