"""`jaxbig prune --workdir RUN --sparsity S [--scope global|layer] [--targets REGEX ...]
[--step N] [--out NEWRUN] [--num-batches K]`: one-shot magnitude
pruning of a run (jaxbig.prune.prune_run): sparsity per layer and validation loss before /
after; with --out, the pruned run as a new workdir (eval, generate, init_from read it).

Keeps its own parser: jaxbig/cli.py hands `jaxbig prune ARGS` to `main(ARGS, prog='jaxbig
prune')`, so help, usage errors (status 2) and exits are the same in both forms.
"""

from __future__ import annotations

import argparse

from jaxbig import prune

PROG = 'jaxbig prune'
DESCRIPTION = 'one-shot magnitude pruning of a run: sparsity per layer, validation loss'
EPILOG = """\
selection: --targets are regexes fullmatched on '/'-joined parameter paths
  (e.g. '.*mlp/.*kernel'); default: every kernel outside paths containing 'embed' (never
  norms, biases, embeddings). Scope 'global' prunes the smallest |w| over the whole
  selection; 'layer' prunes each kernel (and each layer of a scanned stack) to the sparsity.
gradual pruning during training: --config.optimizer.prune.* (jaxbig/optim.py).
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', required=True, help='a training workdir')
    parser.add_argument('--sparsity', type=float, required=True,
                        help='fraction of the selected weights set to 0, in [0, 1)')
    parser.add_argument('--scope', choices=['global', 'layer'], default='global',
                        help='rank all selected weights together, or each layer alone')
    parser.add_argument('--targets', nargs='+', default=[], metavar='REGEX',
                        help='parameter path regexes to prune (default: the kernels)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    parser.add_argument('--out', default='', help='write the pruned run as this new workdir')
    parser.add_argument('--num-batches', type=int, default=0, help='0 = evals.val.num_batches')
    return parser


def _percent(zeros: int, size: int) -> str:
    return f'{100 * zeros / size:5.1f}%'


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parses `argv` (default: sys.argv[1:]), prunes, prints the report; returns 0. Errors in
    the run or the selection propagate: the caller prints them (jaxbig.cli.guarded)."""
    args = build_parser(prog).parse_args(argv)
    r = prune.prune_run(args.workdir, args.sparsity, scope=args.scope, targets=args.targets,
                        step=args.step, out=args.out, num_batches=args.num_batches)
    print(f"{args.workdir} step {r['step']}: magnitude pruning to {100 * r['sparsity']:g}% "
          f"({r['scope']}) of {len(r['layers'])} tensors, {r['selected_size']:,} of "
          f"{r['num_params']:,} weights")
    width = max(len(row['path']) for row in r['layers'])
    for row in r['layers']:
        shape = str(list(row['shape']))
        line = f"  {row['path']:{width}s}  {shape:18s} {_percent(row['zeros'], row['size'])}"
        if 'per_layer' in row:
            line += '  per layer: ' + ' '.join(
                _percent(z, row['layer_size']).strip() for z in row['per_layer'])
        print(line)
    print(f"zeros: {r['selected_zeros']:,} of {r['selected_size']:,} selected weights "
          f"({_percent(r['selected_zeros'], r['selected_size']).strip()}), "
          f"{_percent(r['selected_zeros'], r['num_params']).strip()} of all parameters")
    print(f"validation loss {r['val_loss_before']:.6f} -> {r['val_loss_after']:.6f} "
          f"({100 * r['val_loss_change']:+.2f}%)")
    if args.out:
        print(f"wrote {args.out} (step {r['step']}, report in {args.out}/{prune.REPORT_FILE}); "
              f"next: jaxbig eval --workdir {args.out}")
    return 0
