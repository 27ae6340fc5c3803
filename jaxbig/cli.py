"""Command line: `jaxbig train --config experiments/lm.py[:arg] --workdir DIR [--config.a.b=v]`.

The one parser of every `jaxbig <command>` (train, eval, generate, sweep, quantize, lora
merge); each handler imports its command module (jaxbig/commands/, jaxbig/sweep/cli.py) only
when that command runs. Config problems exit with status 2 and one line naming the key;
`--debug` (before or after the subcommand) shows tracebacks. `jaxbig quantize ARGS` and
`jaxbig lora merge ARGS` hand ARGS verbatim to the commands' own parsers. There is one way
in: `jaxbig <command>` (no `python -m jaxbig.<tool>` forms; library modules never import
this one).
No option may be abbreviated (`--work` is not `--workdir`); `--config.a.b=v` overrides reach
`train`/`sweep` as unparsed extras.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jaxbig import config as config_lib
from jaxbig.safety import TrainingDiverged


def load_config(spec: str, extra: list[str]):
    from jaxbig import experiment

    return experiment.load_config(spec, extra)


def _train(args, extra):
    from jaxbig import train

    config = load_config(args.config, extra)
    train.train(config, args.workdir, force=args.force)


def _eval(args, extra):
    if extra:
        raise config_lib.ConfigError(f'jaxbig eval takes no overrides, got {extra}')
    from jaxbig.commands import eval as eval_command

    return eval_command.main(args)


def _generate(args, extra):
    if extra:
        raise config_lib.ConfigError(f'generate: unrecognised arguments {" ".join(extra)}')
    from jaxbig.commands import generate

    return generate.main(args)


TRAIN_EPILOG = """\
the config:
  --config FILE.py[:ARG]    FILE.py defines get_config(arg); the text after ':' is passed to it
                            verbatim (None without ':'). jaxbig's experiments read it as
                            key=value,... (documented in each file's docstring), e.g.
                            --config experiments/lm.py:size=small,steps=200
overrides:
  --config.a.b=VALUE        (or --config.a.b VALUE; repeatable) sets any key of the config
                            get_config returned, e.g. --config.optimizer.lr=1e-3
                            --config.train.batch_size=64. VALUE is converted to the key's type
                            (int, float, bool true/false, str, tuple literal like (1, 2)); a
                            value of the wrong type, or an unknown key (the message names the
                            nearest valid key), exits with status 2 and one line.
resuming:
  Running the same command again resumes from the newest checkpoint in --workdir, exactly
  (the same batches and losses as an uninterrupted run); raise --config.train.steps to train
  longer. SIGTERM / Ctrl-C saves a checkpoint and exits 0. A workdir holding a different
  experiment (its model, data or loss config differ) is refused; --force resumes it anyway.
errors:
  config problems exit with status 2 and one line; --debug (before or after the subcommand)
  shows the full traceback.
"""


class _HelpFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """Shows `(default: X)` for options with a real default (not None/False or required)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help or ''
        return super()._get_help_string(action)


def _run_quantize(args, extra):
    """`jaxbig quantize ARGS`: jaxbig/commands/quantize.py's parser."""
    from jaxbig.commands import quantize

    return quantize.main(extra, prog='jaxbig quantize')


def _run_prune(args, extra):
    """`jaxbig prune ARGS`: jaxbig/commands/prune.py's parser."""
    from jaxbig.commands import prune

    return prune.main(extra, prog='jaxbig prune')


def _run_lora(args, extra):
    """`jaxbig lora merge ARGS`: jaxbig/commands/lora.py's parser."""
    from jaxbig.commands import lora

    return lora.main(extra, prog='jaxbig lora')


def _add_passthrough(sub, name: str, run, help: str):
    """A subcommand whose arguments (including --help) go verbatim to another module's main."""
    p = sub.add_parser(name, help=help, add_help=False, allow_abbrev=False)
    p.set_defaults(run=run, passthrough=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    from jaxbig import __version__

    common = dict(formatter_class=_HelpFormatter, allow_abbrev=False)
    parser = argparse.ArgumentParser(
        prog='jaxbig', description=__doc__.splitlines()[0], **common
    )
    parser.add_argument('--version', action='version', version=f'jaxbig {__version__}')
    parser.add_argument('--debug', action='store_true', help='show full tracebacks')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def add(name, help, **kwargs):
        return sub.add_parser(name, help=help, description=help, **common, **kwargs)

    p = add('train', 'train (or resume) an experiment config in a workdir', epilog=TRAIN_EPILOG)
    p.add_argument(
        '--config', required=True, metavar='FILE.py[:ARG]',
        help='the experiment file (its get_config(ARG) builds the config); see below',
    )
    p.add_argument('--workdir', required=True, help='outputs, checkpoints; resumes if present')
    p.add_argument(
        '--force',
        action='store_true',
        help='resume a workdir even if it holds a different experiment',
    )
    p.set_defaults(run=_train)
    p = add('eval', "re-run a run's evaluators on its best (or latest) checkpoint")
    p.add_argument('--workdir', required=True, help='a training workdir')
    p.add_argument('--step', type=int, default=-1, help='a checkpoint step; -1 = best/latest')
    p.set_defaults(run=_eval)
    p = add('generate', "sample text from a trained run's latest checkpoint")
    p.add_argument('--workdir', required=True, help='a training workdir (config.json, checkpoints)')
    p.add_argument('--prompt', action='append', help='prompt text; repeat for a batch')
    p.add_argument('--prompt-file', help='a file whose whole text is one more prompt')
    p.add_argument('--max-new-tokens', type=int, default=200, help='tokens to sample per prompt')
    p.add_argument('--temperature', type=float, default=0.8, help='0 = greedy')
    p.add_argument('--top-k', type=int, default=0, help='0 = off')
    p.add_argument('--top-p', type=float, default=1.0, help='1 = off')
    p.add_argument('--seed', type=int, default=0, help='sampling seed')
    p.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    p.add_argument('--stop', help=r'stop after this text; backslash escapes work ("\n\n")')
    p.add_argument(
        '--quantize', choices=['none', 'int8'], default='none',
        help='int8: sample with int8 weight-only quantized kernels',
    )
    p.set_defaults(run=_generate)
    from jaxbig.commands import interop

    interop.add_parsers(add)
    from jaxbig.commands import tokenizer

    tokenizer.add_parser(add)
    from jaxbig.commands import plan

    plan.add_parser(add)
    from jaxbig.commands import harness

    harness.add_parser(add)
    from jaxbig import sweep

    p = sweep.add_parser(sub)
    p.formatter_class, p.allow_abbrev = _HelpFormatter, False
    _add_passthrough(
        sub, 'quantize', _run_quantize,
        'int8 weight-only quantization report of a run (see jaxbig quantize --help)',
    )
    _add_passthrough(
        sub, 'prune', _run_prune,
        'magnitude pruning of a run: sparsity per layer, validation loss before / after '
        '(see jaxbig prune --help)',
    )
    _add_passthrough(
        sub, 'lora', _run_lora,
        'lora merge: write a LoRA run\'s merged plain weights (see jaxbig lora merge --help)',
    )
    # `--debug` works before or after the subcommand: each subcommand's own --debug leaves the
    # value alone unless given (a subparser's default would overwrite `jaxbig --debug CMD`).
    for name, p in sub.choices.items():
        if p.get_default('passthrough'):
            continue
        if not any(a.dest == 'debug' for a in p._actions):
            p.add_argument('--debug', action='store_true', help='show full tracebacks')
        for action in p._actions:
            if action.dest == 'debug':
                action.default = argparse.SUPPRESS
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    return guarded(lambda: args.run(args, extra), debug=args.debug)


def guarded(command, debug: bool = False) -> int:
    """Runs `command()` with the CLI's logging and error policy; returns the exit status:
    command()'s own (None = 0); 2 after a config, value or OS error, 3 after a diverged
    training, each printed as one line `jaxbig: error: ...` (re-raised with `debug`)."""
    logging.basicConfig(
        level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S'
    )
    for noisy in ('absl', 'jax._src', 'orbax', 'tensorflow_datasets'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = command()
    except (config_lib.ConfigError, ValueError, OSError) as e:
        if debug:
            raise
        print(f'jaxbig: error: {e}', file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        if debug:
            raise
        print(f'jaxbig: error: {e}', file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == '__main__':
    sys.exit(main())
