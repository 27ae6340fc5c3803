"""Config loading, overrides and their one-line errors (library and CLI)."""
import subprocess
import sys

import pytest

from jaxbig import cli
from jaxbig import config as config_lib

LM = 'experiments/lm.py'


def test_load_with_arg_and_overrides():
    c = cli.load_config(f'{LM}:size=small,steps=7', ['--config.optimizer.lr=1e-4',
                                                     '--config.train.seed', '3'])
    assert c.model.embed_dim == 256 and c.train.steps == 7
    assert c.optimizer.lr == 1e-4 and c.train.seed == 3


def test_override_types():
    c = config_lib.load(LM)
    config_lib.apply_overrides(c, [('model.tie_embeddings', 'false'), ('train.steps', '1e3'),
                                   ('optimizer.lr', '2'), ('parallel.rules', '[["batch", "data"]]')])
    assert c.model.tie_embeddings is False and c.train.steps == 1000
    assert c.optimizer.lr == 2.0 and isinstance(c.optimizer.lr, float)
    assert c.parallel.rules == [['batch', 'data']]


@pytest.mark.parametrize('override, expected', [
    (('optimizer.lrr', '1'), "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'"),
    (('train.stepz', '1'), "did you mean 'train.steps'"),
    (('nosuch.key', '1'), "unknown config key 'nosuch.key'"),
    (('optimizer.lr', 'fast'), "--config.optimizer.lr: expected a number, got 'fast'"),
    (('train.steps', '1.5'), '--config.train.steps: expected an integer'),
    (('model.scan_layers', 'maybe'), 'expected a boolean'),
    (('model', '1'), 'is a section'),
])
def test_bad_overrides(override, expected):
    c = config_lib.load(LM)
    with pytest.raises(config_lib.ConfigError, match=None) as e:
        config_lib.apply_overrides(c, [override])
    assert expected in str(e.value)
    assert '\n' not in str(e.value)


def test_parse_arg_errors():
    with pytest.raises(config_lib.ConfigError, match="did you mean 'size'"):
        config_lib.load(f'{LM}:sise=tiny')
    with pytest.raises(config_lib.ConfigError, match="expected an integer, got 'x'"):
        config_lib.load(f'{LM}:steps=x')
    with pytest.raises(config_lib.ConfigError, match='no such file'):
        config_lib.load('experiments/nope.py')


def test_json_roundtrip():
    c = config_lib.load(LM)
    assert config_lib.from_json(config_lib.to_json(c)).to_dict() == \
        config_lib.from_json(config_lib.to_json(config_lib.from_json(config_lib.to_json(c)))).to_dict()


@pytest.mark.parametrize('args, expected', [
    (['--config.optimizer.lrr=1e-3'], "did you mean 'optimizer.lr'"),
    (['--config.train.batch_size=big'], "train.batch_size: expected an integer, got 'big'"),
])
def test_cli_exits_nonzero_with_one_line(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, '-m', 'jaxbig', 'train', '--config', LM,
                           '--workdir', str(tmp_path / 'w'), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('package, what, provides, helper', [
    ('jaxbig.models', 'model.name', 'Model', 'layers'),
    ('jaxbig.losses', 'loss.name', 'loss_fn', None),
    ('jaxbig.data.pipelines', 'data.pipeline', 'build_pipeline', None),
    ('jaxbig.evals', 'evals.val.type', 'Evaluator', None)])
def test_one_resolution_rule_and_error_type(package, what, provides, helper):
    """Every config name -> module lookup goes through config.resolve: one ConfigError
    naming the key and listing the modules that define the entry point (helpers not)."""
    with pytest.raises(config_lib.ConfigError,
                       match=rf"{what}='nope': no module {package}.nope defining {provides} "
                             rf"\(available: .+\)") as e:
        config_lib.resolve(package, 'nope', what, provides)
    if helper:
        assert helper not in str(e.value).split('available: ')[1]
        with pytest.raises(config_lib.ConfigError, match=rf"{what}='{helper}': no module"):
            config_lib.resolve(package, helper, what, provides)
    with pytest.raises(config_lib.ConfigError, match=rf"{what}='': no module"):
        config_lib.resolve(package, '', what, provides)
    from jaxbig import data, evals, losses, models
    assert models.get_model('gpt', vocab_size=8, num_layers=1, num_heads=1, embed_dim=8,
                            mlp_dim=8).__class__.__module__ == 'jaxbig.models.gpt'
    assert losses.get_loss_module('autoregressive').__name__ == 'jaxbig.losses.autoregressive'
    assert data.pipeline_module({'pipeline': 'lm'}).__name__ == 'jaxbig.data.pipelines.lm'
    assert evals.resolve is config_lib.resolve
