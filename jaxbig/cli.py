"""Command line: `jaxbig train --config experiments/lm.py[:arg] --workdir DIR [--config.a.b=v]`.

Config problems exit with status 2 and one line naming the key; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jaxbig import config as config_lib
from jaxbig.safety import TrainingDiverged


def _split_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith('--config.'):
            raise config_lib.ConfigError(
                f'unrecognised argument {arg!r} (overrides look like --config.optimizer.lr=1e-3)'
            )
        key, sep, value = arg[len('--config.') :].partition('=')
        if not sep:
            if i + 1 >= len(extra):
                raise config_lib.ConfigError(f'--config.{key}: missing value')
            value, i = extra[i + 1], i + 1
        out.append((key, value))
        i += 1
    return out


def load_config(spec: str, extra: list[str]):
    config = config_lib.load(spec)
    config_lib.apply_overrides(config, _split_overrides(extra))
    return config


def _train(args, extra):
    from jaxbig import train

    config = load_config(args.config, extra)
    train.train(config, args.workdir, force=args.force)


def _eval(args, extra):
    if extra:
        raise config_lib.ConfigError(f'jaxbig eval takes no overrides, got {extra}')
    from jaxbig import evaluate

    evaluate.evaluate(args.workdir, None if args.step < 0 else args.step)


def _generate(args, extra):
    from jaxbig import generate

    if extra:
        raise config_lib.ConfigError(f'generate: unrecognised arguments {" ".join(extra)}')
    generate.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='jaxbig', description=__doc__.splitlines()[0])
    parser.add_argument('--debug', action='store_true', help='show full tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('train', help='train (or resume) an experiment config in a workdir')
    p.add_argument('--config', required=True, help='experiments/file.py[:key=value,...]')
    p.add_argument('--workdir', required=True, help='outputs, checkpoints; resumes if present')
    p.add_argument(
        '--force',
        action='store_true',
        help='resume a workdir even if it holds a different experiment',
    )
    p.add_argument('--debug', action='store_true', help='show full tracebacks')
    p.set_defaults(run=_train)
    p = sub.add_parser('eval', help="re-run a run's evaluators on its best (or latest) checkpoint")
    p.add_argument('--workdir', required=True)
    p.add_argument('--step', type=int, default=-1, help='a checkpoint step (default: best/latest)')
    p.add_argument('--debug', action='store_true', help='show full tracebacks')
    p.set_defaults(run=_eval)
    p = sub.add_parser('generate', help="sample text from a trained run's latest checkpoint")
    p.add_argument('--workdir', required=True, help='a training workdir (config.json, checkpoints)')
    p.add_argument('--prompt', action='append', help='prompt text; repeat for a batch')
    p.add_argument('--prompt-file', help='a file whose whole text is one more prompt')
    p.add_argument('--max-new-tokens', type=int, default=200)
    p.add_argument('--temperature', type=float, default=0.8, help='0 = greedy')
    p.add_argument('--top-k', type=int, default=0, help='0 = off')
    p.add_argument('--top-p', type=float, default=1.0, help='1 = off')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    p.add_argument('--stop', help=r'stop after this text; backslash escapes work ("\n\n")')
    p.add_argument('--quantize', choices=['none', 'int8'], default='none')
    p.add_argument('--debug', action='store_true', help='show full tracebacks')
    p.set_defaults(run=_generate)
    from jaxbig import sweep

    sweep.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S'
    )
    for noisy in ('absl', 'jax._src', 'orbax', 'tensorflow_datasets'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.run(args, extra)
    except (config_lib.ConfigError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f'jaxbig: error: {e}', file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        if args.debug:
            raise
        print(f'jaxbig: error: {e}', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
