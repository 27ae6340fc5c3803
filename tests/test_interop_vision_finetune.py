"""An imported bare transformers `ViTModel` as experiments/finetune_image.py's backbone:
the imported params land under `encoder/` at step 0 (pooler included), and the digits task
trains on them in linear_probe (backbone bit-identical afterwards), full and lora modes;
features mode embeds with the imported model's pooled features (checked against
transformers' pooler_output)."""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import metric_series  # noqa: E402
from jaxbig import checkpoint, cli, finetune, train  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.config import ConfigError  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

# digits are 8 x 8 x 1: a ViT of that size (4 patches of 4 x 4), one channel
VIT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
           image_size=8, patch_size=4, num_channels=1)
SMALL = ['--config.train.log_every=1', '--config.train.eval_every=0',
         '--config.train.checkpoint_every=0', '--config.evals.val.num_examples=120']


def _pretrained_vit():
    """A transformers ViTModel (with its pooler) briefly trained in torch on 1,000 of
    scikit-learn's digits through a linear layer on pooler_output: a random ViT's pooled
    features barely vary between images (a linear probe on them hardly moves)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor((images[:1000] / 8.0 - 1.0).reshape(-1, 1, 8, 8), dtype=torch.float32)
    y = torch.tensor(labels[:1000])
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**VIT))
    head = torch.nn.Linear(VIT['hidden_size'], 10)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    for i in range(150):
        rows = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(
            head(model(pixel_values=x[rows]).pooler_output), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope='module')
def vit_run(tfds_dir, tmp_path_factory):
    """(workdir of an imported ViTModel with a pooler, the transformers model)."""
    root = tmp_path_factory.mktemp('vit')
    model = _pretrained_vit()
    model.save_pretrained(str(root / 'hf'))
    hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return str(root / 'run'), model


def _config(run, mode, steps=25, extra=()):
    return cli.load_config(f'experiments/finetune_image.py:init={run},mode={mode},'
                           f'steps={steps},batch=64,lr=0.05', [*SMALL, *extra])


def _falls(workdir):
    losses = list(metric_series(workdir).values())
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


def _imported(run):
    return {f'encoder/{k}': np.asarray(v)
            for k, v in finetune.flatten(checkpoint.restore_params(run)[0]).items()}


def test_backbone_is_the_imported_vit_at_step_0(vit_run, tmp_path):
    run, model = vit_run
    config = _config(run, 'full')
    assert config.model.backbone.name == 'vit' and config.model.backbone.pooler_dim == 16
    assert config.data.image_size == 8
    from jaxbig import data

    data.prepare(config.data)
    s = run_lib.setup(config, str(tmp_path), with_evals=False)
    with jax.set_mesh(s.mesh):
        fresh = jax.jit(s.init, out_shardings=s.state_shardings)().params
        params, loaded = finetune.load_init_from(config.init_from, fresh,
                                                 s.state_shardings.params)
    want = _imported(run)
    flat = finetune.flatten(params)
    assert sorted(loaded) == sorted(want) == sorted(k for k in flat if k.startswith('encoder/'))
    for path, value in want.items():
        np.testing.assert_array_equal(np.asarray(flat[path]), value, err_msg=path)
    # the head reads HF's pooler_output (tanh(dense(CLS after the final LayerNorm)))
    images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    ours = s.model.apply({'params': params}, images, method='features')
    with torch.no_grad():
        ref = model(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).pooler_output
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-5, rtol=0)


def test_linear_probe_keeps_the_imported_backbone(vit_run, tmp_path):
    run, _ = vit_run
    out = str(tmp_path / 'probe')
    last = train.train(_config(run, 'linear_probe'), out)
    _falls(out)
    assert 0 <= last['val/accuracy'] <= 1
    after = finetune.flatten(checkpoint.restore_params(out)[0])
    for path, value in _imported(run).items():
        np.testing.assert_array_equal(np.asarray(after[path]), value, err_msg=path)


@pytest.mark.slow  # ~30 s of training; linear_probe keeps the imported backbone path default
def test_full_finetune_trains_the_imported_backbone(vit_run, tmp_path):
    run, _ = vit_run
    out = str(tmp_path / 'full')
    train.train(_config(run, 'full'), out)
    _falls(out)
    after = finetune.flatten(checkpoint.restore_params(out)[0])
    kernel = 'encoder/encoder/layers_0/query/kernel'
    assert not np.array_equal(np.asarray(after[kernel]), _imported(run)[kernel])


@pytest.mark.slow  # ~50 s on the shared 2-core CPU: two more training runs
def test_lora_and_features_modes_on_the_imported_vit(vit_run, tmp_path):
    run, _ = vit_run
    out = str(tmp_path / 'lora')
    config = _config(run, 'lora', extra=['--config.lora.rank=2'])
    assert list(config.optimizer.freeze) == ['encoder/.*']
    train.train(config, out)
    _falls(out)
    params = checkpoint.restore_params(out)[0]
    adapters = finetune.flatten(params['lora'])
    assert sorted({p.split('/')[-3] for p in adapters}) == ['query', 'value']
    flat = finetune.flatten({k: v for k, v in params.items() if k != 'lora'})
    for path, value in _imported(run).items():  # the base weights stay frozen
        np.testing.assert_array_equal(np.asarray(flat[path]), value, err_msg=path)
    out = str(tmp_path / 'features')
    config = _config(run, 'features', steps=40)
    assert config.data.source.image_size == 8
    last = train.train(config, out)
    _falls(out)
    assert last['val/accuracy'] > 0.2  # chance 0.1


def test_lora_needs_a_vit_and_other_runs_are_refused(tmp_path):
    import json

    (tmp_path / 'gpt').mkdir()
    (tmp_path / 'gpt' / 'config.json').write_text(json.dumps({'model': {'name': 'gpt'}}))
    with pytest.raises(ConfigError, match=r"init=.* has model.name='gpt', expected a run "):
        cli.load_config(f'experiments/finetune_image.py:init={tmp_path / "gpt"}', [])
    with pytest.raises(ConfigError, match="mode=lora needs a ViT backbone, not 'resnet'"):
        cli.load_config('experiments/finetune_image.py:mode=lora', [])
    assert os.listdir(tmp_path) == ['gpt']
