"""jaxbig/run.py and the loop's user path: one way to read a run back (params only), LoRA +
generate, 'auto' values resolved after overrides, the end-of-training summary, profiling."""
import glob
import gzip
import json
import os

import jax
import numpy as np
import pytest

from conftest import TINY_LM, metric_series
from jaxbig import checkpoint, cli, train
from jaxbig import generate as gen
from jaxbig import run as run_lib
from jaxbig.config import ConfigError

LM = 'experiments/lm.py'
LORA = ['--config.lora.targets=[".*attn/(query|value)/kernel"]', '--config.lora.rank=4',
        '--config.optimizer.freeze=["(?!lora/).*"]']


@pytest.fixture(scope='module')
def lora_lm(tfds_dir, tmp_path_factory):
    """A tiny LM trained 3 steps with LoRA adapters only (the base frozen)."""
    workdir = str(tmp_path_factory.mktemp('lora_lm'))
    config = cli.load_config(f'{LM}:steps=3', [*TINY_LM, *LORA, '--config.optimizer.lr=3e-2'])
    train.train(config, workdir)
    return workdir


def test_lora_lm_generates_with_adapters_and_they_matter(lora_lm):
    run = run_lib.load_run(lora_lm)
    assert 'lora' in run.params and run.step == 3
    prompt = [run.tokenizer.encode('def f(x):')]
    out, n = gen.generate(run.model, run.params, prompt, max_new_tokens=12, temperature=0)
    assert n[0] == 12
    # the cached loop equals the uncached forward of the LoRA model (adapters merged)
    ref = gen.generate_uncached(run.model, run.params, prompt[0], max_new_tokens=12)
    np.testing.assert_array_equal(out[0], ref)
    # and the adapters are not a no-op: zeroing B changes the logits
    tokens = np.asarray(prompt)
    zeroed = jax.tree.map(np.zeros_like, run.params['lora'])
    with_b = run.model.apply({'params': run.params}, tokens)
    without = run.model.apply({'params': {**run.params, 'lora': zeroed}}, tokens)
    assert np.abs(np.asarray(with_b) - np.asarray(without)).max() > 1e-4


def test_lora_lm_through_the_generate_command(lora_lm, capsys):
    assert cli.main(['generate', '--workdir', lora_lm, '--prompt', 'import ',
                     '--max-new-tokens', '8', '--temperature', '0']) == 0
    assert capsys.readouterr().out.startswith('import ')


def test_load_run_reads_params_only(lora_lm, monkeypatch):
    """The restore asks orbax for the params subtree alone (no optimizer moments read)."""
    import orbax.checkpoint as ocp

    asked = []
    real = ocp.PyTreeCheckpointer.restore

    def spy(self, directory, *args, **kwargs):
        asked.append(kwargs['args'])
        return real(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, 'restore', spy)
    run = run_lib.load_run(lora_lm)
    (args,) = asked
    assert set(args.item) == {'params'} and args.partial_restore
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(run.params))
    # placed into given shardings instead of host arrays
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    placed, _ = checkpoint.restore_params(lora_lm, shardings=jax.tree.map(
        lambda _: sharding, run.params))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(placed))


def test_load_run_errors_are_one_line(lora_lm, tmp_path):
    with pytest.raises(ConfigError, match='no config.json'):
        run_lib.load_run(str(tmp_path))
    with pytest.raises(ConfigError, match='no best checkpoint'):
        run_lib.load_run(lora_lm, best=True)
    with pytest.raises(FileNotFoundError, match=r'step 7: .*available steps: \[3\]'):
        run_lib.load_run(lora_lm, 7)


def test_auto_values_are_resolved_after_overrides():
    base = cli.load_config(f'{LM}:size=tiny', [])
    assert base.model.scan_layers is False and base.model.remat == 'none'
    assert base.optimizer.warmup_steps == 600 // 20
    deep = cli.load_config(f'{LM}:size=tiny', ['--config.model.num_layers=12',
                                               '--config.model.embed_dim=768',
                                               '--config.train.steps=1000'])
    assert deep.model.scan_layers is True and deep.model.remat == 'dots'
    assert deep.optimizer.warmup_steps == 50
    fixed = cli.load_config(LM, ['--config.optimizer.warmup_steps=7',
                                 '--config.model.scan_layers=true', '--config.model.remat=full'])
    assert (fixed.optimizer.warmup_steps, fixed.model.scan_layers, fixed.model.remat) == (
        7, True, 'full')
    with pytest.raises(ConfigError, match='warmup_steps: expected an integer'):
        cli.load_config(LM, ['--config.optimizer.warmup_steps=soon'])


def test_resolved_values_are_written_and_summary_printed(lora_lm, capsys, tfds_dir, tmp_path):
    written = json.loads(open(os.path.join(lora_lm, 'config.json')).read())
    assert written['model']['scan_layers'] is False and written['model']['remat'] == 'none'
    assert written['optimizer']['warmup_steps'] == 1
    workdir = str(tmp_path / 'w')
    config = cli.load_config(f'{LM}:steps=2', [*TINY_LM, '--config.train.eval_every=2'])
    last = train.train(config, workdir)
    out = capsys.readouterr().out
    assert f'trained gpt to step 2 of 2 in {workdir}' in out
    assert f'{last["val/loss"]:.6g}' in out and f'{last["train/loss"]:.6g}' in out
    assert f'next: jaxbig eval --workdir {workdir}' in out
    assert f'jaxbig generate --workdir {workdir}' in out


def test_profile_steps_write_a_trace(tfds_dir, tmp_path):
    workdir = str(tmp_path / 'w')
    config = cli.load_config(f'{LM}:steps=4', [*TINY_LM, '--config.train.profile_steps=(1, 3)'])
    train.train(config, workdir)
    planes = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*', '*.xplane.pb'))
    assert len(planes) == 1 and os.path.getsize(planes[0]) > 0
    assert len(metric_series(workdir)) == 4  # the run itself unchanged
    traces = glob.glob(os.path.join(os.path.dirname(planes[0]), '*.trace.json.gz'))
    for trace in traces:  # Perfetto / chrome://tracing format, when jax writes it
        with gzip.open(trace) as f:
            assert json.load(f)['traceEvents']
    try:  # the real viewer's reader, where installed (`pip install xprof`; ~350 MB, so it
        from xprof.convert import raw_to_tool_data  # is not in the test extra)
    except ImportError:
        return
    assert 'trace_viewer@' in raw_to_tool_data.xspace_to_tool_names(planes)
    data, _ = raw_to_tool_data.xspace_to_tool_data(planes, 'trace_viewer@', {})
    assert data and json.loads(data)


@pytest.mark.parametrize('bad', ['(3, 1)', '(1, 2, 3)', '(-1, 2)'])
def test_profile_steps_bad_values(bad):
    with pytest.raises(ConfigError, match='train.profile_steps'):
        train.validate(cli.load_config(LM, [f'--config.train.profile_steps={bad}']))
