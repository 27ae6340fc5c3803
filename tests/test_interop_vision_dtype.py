"""bfloat16 ViT / CLIP checkpoints import as bfloat16 (params with the checkpoint's exact
values, the models computing in bfloat16), export back bit-identically, and compute close
to transformers' float32 model (`--param-dtype float32` upcasting:
tests/test_interop_vision.py)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from jaxbig import run as run_lib  # noqa: E402
from jaxbig.interop import hf  # noqa: E402

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           image_size=16, patch_size=4)


def _save_bf16(model, path):
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(path)
    return model


def _dtypes(params):
    return {str(x.dtype) for x in jax.tree.leaves(params)}


def _round_trip(run, out, model):
    """Export of the imported run loads back with the very same bfloat16 tensors."""
    info = hf.export_run(run, out)
    assert info['dtype'] == 'bfloat16'
    back = type(model).from_pretrained(out, dtype=torch.bfloat16)
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert got[key].dtype == torch.bfloat16 and torch.equal(want[key], got[key]), key


def test_bfloat16_vit_keeps_its_dtype(tmp_path):
    model = _save_bf16(transformers.ViTModel(transformers.ViTConfig(**VIT)), str(tmp_path / 'hf'))
    info = hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    run = run_lib.load_run(str(tmp_path / 'run'))
    assert info['dtype'] == 'bfloat16' and _dtypes(run.params) == {'bfloat16'}
    assert run.config.model.dtype == run.config.model.param_dtype == 'bfloat16'
    want = model.state_dict()['layers.1.attention.q_proj.weight']
    got = np.asarray(run.params['encoder']['layers_1']['query']['kernel'], np.float32)
    np.testing.assert_array_equal(got.reshape(32, 32).T, want.float().numpy())
    _round_trip(str(tmp_path / 'run'), str(tmp_path / 'out'), model)
    pixels = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    ours = run.model.apply({'params': run.params}, pixels.transpose(0, 2, 3, 1))
    assert ours.dtype == np.dtype('bfloat16')
    with torch.no_grad():
        ref = model.float()(pixel_values=torch.tensor(pixels)).pooler_output.numpy()
    # bfloat16 compute (8-bit mantissa) against float32 on the same weights
    np.testing.assert_allclose(np.asarray(ours, np.float32), ref, atol=0.1, rtol=0)


def test_bfloat16_clip_keeps_its_dtype(tmp_path):
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=12, bos_token_id=0,
                eos_token_id=63, pad_token_id=1)
    vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=2, image_size=16, patch_size=4)
    model = _save_bf16(transformers.CLIPModel(transformers.CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=20)), str(tmp_path / 'hf'))
    info = hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    run = run_lib.load_run(str(tmp_path / 'run'))
    assert info['dtype'] == 'bfloat16' and _dtypes(run.params) == {'bfloat16'}
    m = run.config.model
    assert {m.dtype, m.image.param_dtype, m.text.param_dtype} == {'bfloat16'}
    np.testing.assert_array_equal(np.asarray(run.params['logit_scale'], np.float32),
                                  model.logit_scale.detach().float().numpy())
    _round_trip(str(tmp_path / 'run'), str(tmp_path / 'out'), model)
    ids = np.array([[0, 5, 9, 33, 63, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    pixels = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    out = run.model.apply({'params': run.params}, pixels.transpose(0, 2, 3, 1), ids)
    with torch.no_grad():
        ref = model.float()(input_ids=torch.tensor(ids).long(), pixel_values=torch.tensor(pixels))
    np.testing.assert_allclose(out['text'], ref.text_embeds.numpy(), atol=0.05, rtol=0)
    np.testing.assert_allclose(out['image'], ref.image_embeds.numpy(), atol=0.05, rtol=0)
