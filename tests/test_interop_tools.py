"""Inference-side tools on an imported run (a tiny random GPT-2 with a BPE tokenizer.json,
tests/test_interop_train.py's fixture): `jaxbig quantize --workdir RUN` reports on it, and
experiments/distill.py takes it as teacher (the student tokenizes with the teacher's
tokenizer.json, so both share its vocabulary) and trains."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import metric_series  # noqa: E402
from jaxbig import cli, train  # noqa: E402
from jaxbig import quantize  # noqa: E402
from test_interop_train import SMALL, gpt2_run  # noqa: E402,F401  (module-scoped fixture)


def test_quantize_reports_on_an_imported_gpt2(gpt2_run, capsys):
    workdir, _, _ = gpt2_run
    capsys.readouterr()
    assert cli.main(['quantize', '--workdir', workdir, '--num-batches', '1']) == 0
    out = capsys.readouterr().out
    assert f'{workdir} step 0: kernel bytes' in out and 'validation loss' in out
    r = quantize.report(workdir, None, 1)
    assert 3.5 < r['kernel_bytes_ratio'] <= 4.0  # int8 + per-channel scales vs float32
    # int8 weights barely move the loss of a random model on BPE text
    assert np.isfinite(r['val_loss_int8']) and abs(r['val_loss_change']) < 0.02, r


@pytest.mark.slow  # ~60-130 s on the shared 2-core CPU (teacher and student compile)
def test_distillation_from_an_imported_gpt2_teacher(gpt2_run, tmp_path):
    workdir, model, tok = gpt2_run
    out = str(tmp_path / 'student')
    config = cli.load_config(f'experiments/distill.py:teacher={workdir},steps=10', SMALL)
    assert config.data.tokenizer.endswith('tokenizer.json')
    assert config.model.vocab_size == tok.get_vocab_size() == model.config.vocab_size
    assert config.model.num_layers == 2 and config.model.embed_dim == 64  # the student's
    train.train(config, out)
    losses = list(metric_series(out).values())
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
