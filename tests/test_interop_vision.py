"""Hugging Face ViT / ViT classifier / CLIP interop against transformers itself: tiny random
models (nothing downloaded), imported into jaxbig and compared in float32 (images NCHW in
transformers, NHWC in jaxbig); export round trips bit-identical; bad inputs are one line
and leave no workdir."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from conftest import edit_safetensors  # noqa: E402
from jaxbig import run as run_lib  # noqa: E402
from jaxbig.aggregate import values
from jaxbig.config import ConfigError  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

VOCAB, EOS, PAD, TEXT_LEN = 64, 63, 1, 12
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           image_size=16, patch_size=4)


def _vit(cls='ViTModel', **kw):
    config = transformers.ViTConfig(**{**VIT, **kw})
    return getattr(transformers, cls)(config)


def _clip(eos=EOS, text_layers=7, **vision):
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                num_hidden_layers=text_layers, num_attention_heads=4,
                max_position_embeddings=TEXT_LEN, bos_token_id=0, eos_token_id=eos,
                pad_token_id=PAD)
    vis = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
               image_size=16, patch_size=4, **vision)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vis,
                                                          projection_dim=20))


BUILDERS = {
    'vit_model_scanned_pooler': lambda: _vit(num_hidden_layers=7),  # > 6 layers: scanned
    'vit_model_no_pooler': lambda: transformers.ViTModel(transformers.ViTConfig(**VIT),
                                                         add_pooling_layer=False),
    'vit_classifier': lambda: _vit('ViTForImageClassification', num_labels=5,
                                   hidden_act='gelu_pytorch_tanh'),
    'clip': _clip,  # text tower scanned (7 layers), image tower unrolled
    'clip_legacy_eos_2': lambda: _clip(eos=2, text_layers=2, hidden_act='gelu'),
}


def _save(model, path):
    torch.manual_seed(0)
    for p in model.parameters():  # random biases and norms too, so their mapping is tested
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope='module', params=sorted(BUILDERS))
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = _save(BUILDERS[request.param](), str(root / 'hf'))
    info = hf.import_dir(str(root / 'hf'), str(root / 'run'))
    return request.param, model, str(root), info


def _images(batch=3, channels=3, size=16, seed=0):
    """NCHW for transformers; .transpose(0, 2, 3, 1) for jaxbig."""
    return np.random.default_rng(seed).normal(size=(batch, channels, size, size)).astype(
        np.float32)


def _texts(eos):
    """Token ids with the eos (or, legacy, the highest id) at different places, pad after."""
    rng = np.random.default_rng(1)
    ids = np.full((3, TEXT_LEN), PAD, np.int64)
    for row, n in enumerate((4, TEXT_LEN - 1, 7)):
        ids[row, :n] = rng.integers(3, VOCAB - 1, n)
        ids[row, 0], ids[row, n] = 0, (VOCAB - 1 if eos == 2 else eos)  # bos ... eot, pad
    return ids, (ids != PAD).astype(np.int64)


def _max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_outputs_match_transformers(imported):
    name, model, root, info = imported
    run = run_lib.load_run(os.path.join(root, 'run'))
    apply = lambda *a, **kw: np.asarray(run.model.apply({'params': run.params}, *a, **kw))
    pixels = _images()
    images = pixels.transpose(0, 2, 3, 1)
    diffs = {}
    with torch.no_grad():
        if name.startswith('clip'):
            ids, mask = _texts(model.config.text_config.eos_token_id)
            ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                        attention_mask=torch.tensor(mask))
            out = run.model.apply({'params': run.params}, images, ids.astype(np.int32))
            logits = np.exp(float(out['logit_scale'])) * np.asarray(out['image']) @ np.asarray(
                out['text']).T
            diffs = dict(image_embeds=_max_diff(out['image'], ref.image_embeds),
                         text_embeds=_max_diff(out['text'], ref.text_embeds),
                         logits_per_image=_max_diff(logits, ref.logits_per_image))
        elif name == 'vit_classifier':
            ref = model(pixel_values=torch.tensor(pixels))
            diffs = dict(logits=_max_diff(apply(images), ref.logits))
            assert run.config.model.name == 'classifier'
        elif name == 'vit_model_no_pooler':  # features = last_hidden_state's CLS
            ref = model(pixel_values=torch.tensor(pixels))
            diffs = dict(last_hidden_state=_max_diff(apply(images, method='tokens'),
                                                     ref.last_hidden_state),
                         cls=_max_diff(apply(images), ref.last_hidden_state[:, 0]))
            assert run.config.model.pooler_dim == 0
        else:
            ref = model(pixel_values=torch.tensor(pixels))
            diffs = dict(last_hidden_state=_max_diff(apply(images, method='tokens'),
                                                     ref.last_hidden_state),
                         pooler_output=_max_diff(apply(images), ref.pooler_output))
            assert 'layers' in run.params['encoder']  # scanned: stacked layer params
    print(name, diffs)
    assert max(diffs.values()) < 1e-4, diffs
    assert info['num_params'] == sum(p.numel() for p in model.parameters())


def test_export_round_trip_is_bit_identical_and_loads_cleanly(imported):
    name, model, root, _ = imported
    out = os.path.join(root, 'exported')
    info = hf.export_run(os.path.join(root, 'run'), out)
    assert info['family'] == type(model).__name__
    extra = dict(add_pooling_layer=False) if name == 'vit_model_no_pooler' else {}
    back, loading = type(model).from_pretrained(out, output_loading_info=True, **extra)
    assert not loading['missing_keys'] and not loading['unexpected_keys'], loading
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    pixels = torch.tensor(_images())
    with torch.no_grad():
        if name.startswith('clip'):
            ids = torch.tensor(_texts(model.config.text_config.eos_token_id)[0])
            a, b = model(input_ids=ids, pixel_values=pixels), back.eval()(input_ids=ids,
                                                                          pixel_values=pixels)
            assert torch.equal(a.logits_per_image, b.logits_per_image)
        else:
            key = dict(vit_classifier='logits', vit_model_no_pooler='last_hidden_state').get(
                name, 'pooler_output')
            assert torch.equal(model(pixel_values=pixels)[key],
                               back.eval()(pixel_values=pixels)[key])


@pytest.mark.slow  # ~1 min of training; the CLIP parity tests stay default
def test_imported_clip_trains_with_its_own_loss_section(tmp_path):
    """The run's loss section on the imported towers: a finite loss and gradients that reach
    both towers (causal text attention, scanned text layers included)."""
    import jax

    from jaxbig import losses

    _save(_clip(), str(tmp_path / 'hf'))
    hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    run = run_lib.load_run(str(tmp_path / 'run'))
    loss_fn = losses.get_loss_module(run.config.loss.name).loss_fn
    batch = dict(image=_images().transpose(0, 2, 3, 1),
                 text=_texts(EOS)[0].astype(np.int32))
    (loss, _), grads = jax.value_and_grad(
        lambda p: values(loss_fn(run.model.apply, p, batch, {}, run.config.loss, train=True)),
        has_aux=True)(run.params)
    assert np.isfinite(float(loss))
    for tower in ('image_tower', 'text_tower'):
        norms = [float(np.abs(g).max()) for g in jax.tree.leaves(grads[tower])]
        assert all(np.isfinite(norms)) and max(norms) > 0, tower


def test_bfloat16_checkpoint_upcasts_with_param_dtype_float32(tmp_path):
    """(bfloat16 kept by default: tests/test_interop_vision_dtype.py.)"""
    model = _save(_vit(num_hidden_layers=1).to(torch.bfloat16), str(tmp_path / 'hf'))
    info = hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'), param_dtype='float32')
    run = run_lib.load_run(str(tmp_path / 'run'))
    assert info['dtype'] == 'float32' and run.config.model.param_dtype == 'float32'
    assert {str(x.dtype) for x in __import__('jax').tree.leaves(run.params)} == {'float32'}
    want = model.state_dict()['layers.0.mlp.fc1.weight'].float().numpy()
    got = np.asarray(run.params['encoder']['layers_0']['mlp_in']['kernel']).T
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError, match='--param-dtype int8: expected one of bfloat16, '):
        hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run8'), param_dtype='int8')


def test_cli_import_and_export(tmp_path, capsys):
    from jaxbig import cli

    _save(_vit('ViTForImageClassification', num_labels=3, num_hidden_layers=1),
          str(tmp_path / 'hf'))
    run = str(tmp_path / 'run')
    assert cli.main(['import', str(tmp_path / 'hf'), '--workdir', run]) == 0
    assert 'vit (' in capsys.readouterr().out
    assert cli.main(['import', str(tmp_path / 'hf'), '--workdir', run]) == 2  # not twice
    assert cli.main(['export', '--workdir', run, '--out', str(tmp_path / 'x'), '--as', 'gpt2']) == 2
    assert 'exports as itself' in capsys.readouterr().err
    assert cli.main(['export', '--workdir', run, '--out', str(tmp_path / 'out')]) == 0
    back = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / 'out'))
    assert type(back).__name__ == 'ViTForImageClassification' and back.config.num_labels == 3


def test_unrepresentable_model_does_not_export(tmp_path):
    _save(_clip(text_layers=1), str(tmp_path / 'hf'))
    run = str(tmp_path / 'run')
    hf.import_dir(str(tmp_path / 'hf'), run)
    file = os.path.join(run, 'config.json')
    cfg = json.load(open(file))
    cfg['model']['text']['causal'] = False
    cfg['model']['image']['pre_norm'] = False
    json.dump(cfg, open(file, 'w'))
    with pytest.raises(ConfigError, match=r'clip needs other image\.pre_norm=False, '
                                          r'text\.causal=False'):
        hf.export_run(run, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


_edit_tensors = edit_safetensors


def _edit_config(path, **changes):
    file = os.path.join(path, 'config.json')
    cfg = json.load(open(file))
    for key, value in changes.items():
        *parents, leaf = key.split('__')
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    json.dump(cfg, open(file, 'w'))


BAD = {
    'vit hidden_act': ('vit', lambda p: _edit_config(p, hidden_act='relu'),
                       "config.json: hidden_act='relu' is not representable in jaxbig's ViT"),
    'vit qkv_bias': ('vit', lambda p: _edit_config(p, qkv_bias=False),
                     "qkv_bias=False is not representable"),
    'vit image_size': ('vit', lambda p: _edit_config(p, image_size=18),
                       'image_size=18 is not representable in jaxbig\'s ViT (not a multiple of '
                       'patch_size=4)'),
    'vit shape': ('vit', lambda p: _edit_tensors(p, lambda t: t.update(
        {'encoder.layer.1.intermediate.dense.bias': np.zeros(7, np.float32)})),
        'tensor encoder.layer.1.intermediate.dense.bias has shape (7,), expected (64,)'),
    'vit left over': ('vit', lambda p: _edit_tensors(p, lambda t: t.update(
        {'encoder.layer.0.extra.weight': np.zeros(3, np.float32)})),
        'tensors left over after mapping to vit: encoder.layer.0.extra.weight'),
    'vit missing': ('vit', lambda p: _edit_tensors(p, lambda t: t.pop('layernorm.bias')),
                    'tensors missing for vit: layernorm.bias'),
    'clip hidden_act': ('clip', lambda p: _edit_config(p, vision_config__hidden_act='silu'),
                        "vision_config.hidden_act='silu' is not representable in jaxbig's CLIP"),
    'clip shape': ('clip', lambda p: _edit_tensors(p, lambda t: t.update(
        {'visual_projection.weight': np.zeros((20, 32), np.float32)})),
        'tensor visual_projection.weight has shape (20, 32), expected (20, 24)'),
    'clip eos': ('clip', lambda p: _edit_config(p, text_config__eos_token_id=49407),
                 'text_config.eos_token_id=49407 is not representable'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_is_one_line_and_leaves_no_workdir(tmp_path, case):
    kind, edit, message = BAD[case]
    path = str(tmp_path / 'hf')
    _save(_vit() if kind == 'vit' else _clip(text_layers=1), path)
    edit(path)
    workdir = tmp_path / 'run'
    with pytest.raises(ConfigError) as e:
        hf.import_dir(path, str(workdir))
    assert message in str(e.value) and '\n' not in str(e.value), str(e.value)
    assert not workdir.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith('.jaxbig-import')] == []


def test_unsupported_architecture_names_every_family(tmp_path):
    path = str(tmp_path / 'hf')
    _save(_vit(num_hidden_layers=1), path)
    _edit_config(path, architectures=['DeiTModel'])
    with pytest.raises(ConfigError, match=r"'DeiTModel' is not supported \(supported: "
                                          r'GPT2LMHeadModel, .*ViTModel, '
                                          r'ViTForImageClassification, CLIPModel, '
                                          r'BertModel, BertForMaskedLM, '
                                          r'BertForSequenceClassification, '
                                          r'T5ForConditionalGeneration\)'):
        hf.import_dir(path, str(tmp_path / 'run'))
