"""The `jaxbig` command line at the parser level: --debug, abbreviations, --version, help text,
and the quantize / lora pass-through subcommands (jaxbig/commands/). Nothing here trains."""
import argparse
import os

import pytest

import jaxbig
from jaxbig import cli
from jaxbig import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = os.path.join(REPO, 'experiments', 'lm.py')

# Each subcommand with the smallest argv it parses.
COMMANDS = {
    'train': ['train', '--config', 'c.py', '--workdir', 'w'],
    'eval': ['eval', '--workdir', 'w'],
    'generate': ['generate', '--workdir', 'w'],
    'sweep': ['sweep', '--workdir', 'w'],
}


def parse(argv):
    return cli.build_parser().parse_known_args(argv)


def subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


# ---------------------------------------------------------------- --debug


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_debug_before_or_after_the_subcommand(name):
    argv = COMMANDS[name]
    assert parse(['--debug', *argv])[0].debug is True
    assert parse([*argv, '--debug'])[0].debug is True
    assert parse(['--debug', *argv, '--debug'])[0].debug is True
    assert parse(argv)[0].debug is False


# ---------------------------------------------------------------- abbreviations


def test_no_abbreviations_anywhere():
    parser = cli.build_parser()
    assert parser.allow_abbrev is False
    for name, p in subparsers(parser).items():
        assert p.allow_abbrev is False, name


def test_abbreviated_option_is_not_taken_for_the_full_one():
    with pytest.raises(SystemExit) as e:  # --work is not --workdir: --workdir is missing
        parse(['train', '--config', 'c.py', '--work', 'runs/x'])
    assert e.value.code == 2
    args, extra = parse([*COMMANDS['train'], '--forc'])
    assert args.force is False and extra == ['--forc']
    args, extra = parse(['eval', '--work', 'w', '--workdir', 'v'])
    assert args.workdir == 'v' and extra == ['--work', 'w']
    args, extra = parse(['--deb', 'eval', '--workdir', 'w'])
    assert args.debug is False and extra == ['--deb']


def test_main_rejects_an_abbreviation_as_one_line(capsys):
    assert cli.main([*COMMANDS['eval'], '--ste', '3']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('jaxbig: error:') and '--ste' in err and '\n' not in err


@pytest.mark.parametrize('name', ['train', 'sweep'])
def test_config_overrides_pass_through_as_extras(name):
    argv = [*COMMANDS[name], '--config.optimizer.lr=1e-3', '--config.train.seed', '3',
            '--config.model.num_layers=2']
    args, extra = parse(argv)
    assert extra == ['--config.optimizer.lr=1e-3', '--config.train.seed', '3',
                     '--config.model.num_layers=2']
    if name == 'train':
        assert args.config == 'c.py'
    assert config_lib.split_overrides(extra) == [('optimizer.lr', '1e-3'), ('train.seed', '3'),
                                           ('model.num_layers', '2')]


def test_train_hands_the_overridden_config_to_train(monkeypatch, tmp_path):
    from jaxbig import train

    seen = {}

    def fake_train(config, workdir, *, force=False):
        seen.update(config=config, workdir=workdir, force=force)

    monkeypatch.setattr(train, 'train', fake_train)
    workdir = str(tmp_path / 'run')
    argv = ['train', '--config', f'{LM}:steps=7', '--workdir', workdir,
            '--config.optimizer.lr=1e-3', '--config.train.seed', '3', '--force']
    assert cli.main(argv) == 0
    assert seen['config'].optimizer.lr == 1e-3 and seen['config'].train.seed == 3
    assert seen['config'].train.steps == 7
    assert seen['workdir'] == workdir and seen['force'] is True


def test_train_unknown_override_is_one_line(monkeypatch, tmp_path, capsys):
    from jaxbig import train

    monkeypatch.setattr(train, 'train', lambda *a, **k: pytest.fail('should not train'))
    argv = ['train', '--config', LM, '--workdir', str(tmp_path), '--config.optimizer.lrr=1']
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'optimizer.lr'" in err and '\n' not in err


# ---------------------------------------------------------------- --version


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['--version'])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f'jaxbig {jaxbig.__version__}'


# ---------------------------------------------------------------- help


def test_every_option_has_help():
    parser = cli.build_parser()
    owned = {k: p for k, p in subparsers(parser).items() if k in ('train', 'eval', 'generate')}
    for name, p in [('jaxbig', parser), *owned.items()]:
        for action in p._actions:
            if action.option_strings:
                assert action.help, f'{name} {action.option_strings[0]} has no help'


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(['generate', '--help'])
    out = capsys.readouterr().out
    assert '(default: 200)' in out and '(default: 0.8)' in out and '(default: none)' in out
    assert '(default: None)' not in out and '(default: False)' not in out
    with pytest.raises(SystemExit):
        cli.main(['eval', '--help'])
    assert '(default: -1)' in capsys.readouterr().out


def test_train_help_epilog(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['train', '--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ('--config FILE.py[:ARG]', 'get_config(arg)', "after ':'", '--config.a.b=VALUE',
                 '--config.optimizer.lr=1e-3', 'nearest valid key', 'resumes from the newest',
                 '--force resumes it anyway', '--debug'):
        assert text in out, text


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ('train', 'eval', 'generate', 'sweep', 'quantize', 'lora', '--version'):
        assert name in out, name
    assert 'lora merge' in out


# ---------------------------------------------------------------- quantize / lora


def test_quantize_help_is_the_commands_own(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['quantize', '--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: jaxbig quantize') and '--num-batches' in out
    assert 'int8 weight-only quantization report' in out


def test_quantize_passes_arguments_verbatim(monkeypatch):
    from jaxbig.commands import quantize

    seen = []
    monkeypatch.setattr(quantize, 'main', lambda argv, prog: seen.append((list(argv), prog)) or 0)
    argv = ['--workdir', 'w', '--step', '3', '--num-batches=2', '--', '--x']
    assert cli.main(['quantize', *argv]) == 0
    assert cli.main(['--debug', 'quantize', '--workdir', 'w']) == 0
    assert seen == [(argv, 'jaxbig quantize'), (['--workdir', 'w'], 'jaxbig quantize')]


def test_quantize_returns_0_and_a_missing_run_is_one_line(monkeypatch, tmp_path, capsys):
    from jaxbig import quantize as quantize_lib
    from jaxbig.commands import quantize

    r = dict(step=3, kernel_bytes_float=400, kernel_bytes_int8=100, kernel_bytes_ratio=4.0,
             val_loss_float=2.0, val_loss_int8=2.01, val_loss_change=0.005)
    monkeypatch.setattr(quantize_lib, 'report', lambda *a: r)
    assert quantize.main(['--workdir', 'w']) == 0
    assert 'w step 3: kernel bytes 400 float32 -> 100 int8+scales (4.00x smaller)' in (
        capsys.readouterr().out)
    monkeypatch.undo()
    assert cli.main(['quantize', '--workdir', str(tmp_path / 'nope')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('jaxbig: error:') and 'no config.json' in err and '\n' not in err


def test_quantize_missing_workdir_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['quantize'])
    assert e.value.code == 2
    assert 'jaxbig quantize: error: the following arguments are required: --workdir' in (
        capsys.readouterr().err)


def test_lora_passes_arguments_verbatim(monkeypatch):
    from jaxbig.commands import lora

    seen = []
    monkeypatch.setattr(lora, 'main', lambda argv, prog: seen.append((list(argv), prog)))
    argv = ['merge', '--workdir', 'w', '--out', 'o', '--step', '5', '--best']
    assert cli.main(['lora', *argv]) == 0
    assert seen == [(argv, 'jaxbig lora')]


def test_lora_merge_missing_workdir_exits_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / 'merged')
    assert cli.main(['lora', 'merge', '--workdir', str(tmp_path / 'nope'), '--out', out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('jaxbig: error:') and 'no config.json' in err and '\n' not in err
    assert not os.path.exists(out)


def test_lora_merge_help_is_the_commands_own(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['lora', 'merge', '--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: jaxbig lora merge')
    assert '--workdir' in out and '--out' in out and '--best' in out and '--step' in out


def test_library_modules_do_not_parse_arguments():
    """The commands parse; the library modules they call do not import argparse."""
    import ast

    for name in ('generate', 'quantize', 'lora', 'run', 'train'):
        path = os.path.join(REPO, 'jaxbig', f'{name}.py')
        with open(path) as f:
            tree = ast.parse(f.read())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert 'argparse' not in imported, name
