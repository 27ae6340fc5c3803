"""The objectives and runs of tests/test_invariance.py, importable by its device subprocess.

An objective is an experiment config (experiments/*.py, loaded as `jaxbig train` loads it)
shrunk to a tiny model, its loss, and STEPS synthetic numpy batches of ROWS rows in the
loss's documented format. Wherever the format has per-row valid targets, row r holds
VALID[r] of them (1, 16, 3, 7), so the micro-batches of grad_accum_steps=2 (rows 0,2 / 1,3:
4 and 23 targets) and the devices of a 2-way split (rows 0,1 / 2,3: 17 and 10) differ.

A run is (objective, switch) -> {'loss': [STEPS] total_loss, 'metrics': {key: [STEPS]},
'params': {path: array}} after STEPS updates, the params in the reference (unrolled) layout.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import xla_options
from flax import traverse_util

from jaxbig import cli, defaults, losses, models, parallel
from jaxbig import pmap as pmap_lib
from jaxbig import step as step_lib
from jaxbig.losses import distillation, grpo, preference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3  # updates per run
ROWS = 4
VALID = (1, 16, 3, 7)  # valid targets per row (ragged formats)
SEQ = 16
VOCAB = 64
SEED = 0
# SGD with momentum and decoupled weight decay on every parameter: the update is linear in
# the gradient, so rounding differences stay rounding-sized (Adam's 1/sqrt(v) would blow
# up those of near-zero gradients). lr makes 3 updates move parameters by ~1e-3..1e-1.
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 0.01

# Every program here is compiled with the suite's fast options (tests/xla_options.py: a
# quarter of the default compile time of these tiny steps, which is nearly all their cost).
# The device subprocess gets the same through XLA_FLAGS, since jaxbig's pmap / mesh paths
# call jax.jit / jax.pmap themselves.
COMPILER_OPTIONS = xla_options.FAST
XLA_FLAGS = xla_options.as_flags(COMPILER_OPTIONS)
DEVICES = 4  # the device subprocess: pmap over the first 2, the mesh data=2 x fsdp=2


def jit(f, **kwargs):
    return jax.jit(f, compiler_options=COMPILER_OPTIONS, **kwargs)


def optimizer():
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))


# ------------------------------------------------------------------------------ batches

def _ragged_mask():
    mask = np.zeros((ROWS, SEQ), np.float32)
    for r, n in enumerate(VALID):
        mask[r, :n] = 1.0
    return mask


def lm_batch(rng, packed: bool):
    tokens = rng.integers(2, VOCAB, (ROWS, SEQ + 1)).astype(np.int32)
    mask = np.ones((ROWS, SEQ), np.float32) if packed else _ragged_mask()
    return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=mask)


# SFT rows (jaxbig.data.pipelines.conditional, pack=True): each row packs examples given as
# (prompt tokens, response tokens incl. eos); an example of n tokens gives n - 1 positions,
# of which the response's are targets. Per-row target counts: 1, 14 (8 + 6), 3, 7.
SFT_ROWS = (((14, 1),), ((1, 8), (1, 6)), ((5, 2), (4, 1)), ((2, 5), (3, 2)))
EOS = 1


def sft_batch(rng):
    out = {k: np.zeros((ROWS, SEQ), np.int32) for k in ('inputs', 'targets', 'positions',
                                                         'segment_ids')}
    out['inputs'][:] = EOS
    out['targets'][:] = EOS
    mask = np.zeros((ROWS, SEQ), np.float32)
    for r, examples in enumerate(SFT_ROWS):
        at = 0
        for k, (prompt, response) in enumerate(examples, start=1):
            tokens = rng.integers(2, VOCAB, prompt + response).astype(np.int32)
            tokens[-1] = EOS
            n = len(tokens) - 1
            out['inputs'][r, at:at + n] = tokens[:-1]
            out['targets'][r, at:at + n] = tokens[1:]
            mask[r, at:at + n] = np.arange(1, n + 1) >= prompt  # targets in the response
            out['positions'][r, at:at + n] = np.arange(n)
            out['segment_ids'][r, at:at + n] = k
            at += n
        assert at <= SEQ, (r, at)
    out['mask'] = mask
    return out


# Preference pairs (jaxbig.data.pipelines.preference): a shared prompt, then responses of
# VALID[r] (chosen) and REJECTED[r] (rejected) target tokens.
REJECTED = (5, 2, 12, 9)


def dpo_batch(rng):
    out = {}
    for side, lengths in (('chosen', VALID), ('rejected', REJECTED)):
        tokens = rng.integers(2, VOCAB, (ROWS, SEQ + 1)).astype(np.int32)
        tokens[:, :3] = 7  # the prompt
        mask = np.zeros((ROWS, SEQ), np.float32)
        for r, n in enumerate(lengths):
            mask[r, SEQ - n:] = 1.0
        out.update({f'{side}_inputs': tokens[:, :-1], f'{side}_targets': tokens[:, 1:],
                    f'{side}_mask': mask})
    return out


# GRPO prompts (jaxbig.data.pipelines.prompts): left-padded prompts of VALID[r] tokens
# (at most SEQ // 2); the completions (sampled in the step) are ragged by themselves.
def grpo_batch(rng):
    width = SEQ // 2
    prompt = np.full((ROWS, width), EOS, np.int32)
    positions = np.full((ROWS, width), -1, np.int32)
    for r, n in enumerate(VALID):
        n = min(n, width)
        prompt[r, width - n:] = rng.integers(2, VOCAB, n)
        positions[r, width - n:] = np.arange(n)
    answer = np.full((ROWS, 4), -1, np.int32)
    answer[:, :3] = rng.integers(2, VOCAB, (ROWS, 3))
    answer[:, 2] = EOS
    return dict(prompt=prompt, prompt_positions=positions, answer=answer)


def mlm_batch(rng):
    return dict(inputs=rng.integers(2, VOCAB - 1, (ROWS, SEQ)).astype(np.int32),
                mask=_ragged_mask())


def seq2seq_batch(rng, enc_len=12):
    enc_valid = (12, 3, 9, 5)
    enc_mask = np.zeros((ROWS, enc_len), np.float32)
    for r, n in enumerate(enc_valid):
        enc_mask[r, :n] = 1
    enc = rng.integers(2, VOCAB, (ROWS, enc_len)).astype(np.int32) * enc_mask.astype(np.int32)
    targets = rng.integers(2, VOCAB, (ROWS, SEQ)).astype(np.int32)
    dec_mask = _ragged_mask()
    targets = targets * dec_mask.astype(np.int32)
    dec_inputs = np.concatenate([np.zeros((ROWS, 1), np.int32), targets[:, :-1]], axis=1)
    return dict(enc_tokens=enc, enc_mask=enc_mask, dec_inputs=dec_inputs,
                dec_targets=targets, dec_mask=dec_mask)


# Classification counts examples: row 2 is a padding row (example_mask 0, as in an
# evaluator's last batch), so micro-batches hold 1 / 2 examples and devices 2 / 1.
EXAMPLE_MASK = np.array([1, 1, 0, 1], np.float32)


def image_batch(rng, size=8, channels=3):
    return dict(image=rng.normal(size=(ROWS, size, size, channels)).astype(np.float32),
                label=rng.integers(0, 10, ROWS).astype(np.int32), example_mask=EXAMPLE_MASK)


def views_batch(rng):
    base = rng.normal(size=(ROWS, 8, 8, 1)).astype(np.float32)
    noise = lambda: 0.3 * rng.normal(size=base.shape).astype(np.float32)  # noqa: E731
    return dict(view1=base + noise(), view2=base + noise())


def captions(rng, vocab, max_len):
    """Token rows with eos (1) after a ragged caption, pad 0."""
    text = np.zeros((ROWS, max_len), np.int32)
    for r, n in enumerate((2, 6, 3, 5)):
        text[r, :n] = rng.integers(3, vocab, n)
        text[r, n] = 1
    return text


def image_text_batch(rng, vocab, max_len):
    return dict(image=rng.normal(size=(ROWS, 8, 8, 3)).astype(np.float32),
                text=captions(rng, vocab, max_len))


AUDIO_SAMPLES = 1024


def audio_text_batch(rng, vocab, max_len):
    t = np.arange(AUDIO_SAMPLES) / 16000.0
    freq = rng.uniform(200, 4000, (ROWS, 1))
    audio = np.sin(2 * np.pi * freq * t) + 0.1 * rng.normal(size=(ROWS, AUDIO_SAMPLES))
    return dict(audio=audio.astype(np.float32), text=captions(rng, vocab, max_len))


# --------------------------------------------------------------------------- objectives

GPT = ['--config.model.num_layers=2', '--config.model.embed_dim=32',
       '--config.model.num_heads=2', '--config.model.mlp_dim=64',
       f'--config.model.vocab_size={VOCAB}', '--config.model.scan_layers=false',
       '--config.model.remat=none']
# experiments/clip.py's ViT image tower and transformer text tower (its defaults are a CNN
# and a bag of words): the towers with the most parts
VIT_TOWERS = 'image=vit,image_width=0,text_pool=eos,text_depth=2'
TOWER = ['--config.model.text.depth=1',
         '--config.model.image.scan_layers=false', '--config.model.text.scan_layers=false']
AUDIO_TOWER = ['--config.model.image.backbone.depth=1', '--config.model.text.depth=1',
               '--config.model.image.backbone.scan_layers=false',
               '--config.model.text.scan_layers=false', '--config.model.image.n_fft=128',
               '--config.model.image.hop=64', '--config.model.image.n_mels=16']

# name -> (experiment spec, overrides, batch maker(rng, config) -> batch)
OBJECTIVES = {
    'lm_packed': ('experiments/lm.py', GPT, lambda rng, c: lm_batch(rng, packed=True)),
    'lm_unpacked': ('experiments/lm.py', GPT, lambda rng, c: lm_batch(rng, packed=False)),
    'sft': ('experiments/sft.py', GPT, lambda rng, c: sft_batch(rng)),
    # Mixture-of-Experts feed-forward, dropless, with its balance and router z-losses; the
    # first of the two layers dense (model.moe.first_dense: a second layer stack)
    'lm_moe': ('experiments/lm.py', [*GPT, '--config.model.moe.experts=4',
                                     '--config.model.moe.first_dense=1'],
               lambda rng, c: lm_batch(rng, packed=False)),
    'mlm': ('experiments/mlm.py',
            ['--config.model.depth=2', '--config.model.width=32', '--config.model.num_heads=2',
             '--config.model.mlp_dim=64', f'--config.model.vocab_size={VOCAB}',
             f'--config.model.max_len={SEQ + 1}', '--config.model.scan_layers=false',
             f'--config.loss.mask_id={VOCAB - 1}', f'--config.loss.random_ids={VOCAB - 1}',
             '--config.loss.rate=0.3'],
            lambda rng, c: mlm_batch(rng)),
    'seq2seq': ('experiments/seq2seq.py',
                ['--config.model.num_layers=2', '--config.model.embed_dim=32',
                 '--config.model.num_heads=2', '--config.model.mlp_dim=64',
                 f'--config.model.vocab_size={VOCAB}', '--config.model.relative_buckets=8',
                 '--config.model.relative_max_distance=16',
                 '--config.model.scan_layers=false'],
                lambda rng, c: seq2seq_batch(rng)),
    # DPO (with cDPO's label smoothing) against a frozen reference GPT of its own init
    'dpo': ('experiments/dpo.py:type=simpo',
            [*GPT, '--config.loss.type=dpo', '--config.loss.label_smoothing=0.1'],
            lambda rng, c: dpo_batch(rng)),
    # GRPO: 3 rollouts per prompt sampled inside the step (keys per global row), k3 KL to a
    # frozen reference GPT of its own init
    'grpo': ('experiments/dpo.py:type=simpo', GPT, lambda rng, c: grpo_batch(rng)),
    'distill': ('experiments/distill.py',
                [*GPT, '--config.loss.temperature=2.0', '--config.loss.alpha=0.5'],
                lambda rng, c: lm_batch(rng, packed=False)),
    'classification': ('experiments/finetune_image.py:mode=full',
                       ['--config.loss.label_smoothing=0.1'],
                       lambda rng, c: image_batch(rng)),
    'simclr': ('experiments/simclr.py:backbone=vit,width=16', [],
               lambda rng, c: views_batch(rng)),
    'clip': ('experiments/clip.py:loss=clip,width=16,embed=16,' + VIT_TOWERS,
             [*TOWER, '--config.model.image.depth=2'],
             lambda rng, c: image_text_batch(rng, c.model.text.vocab_size,
                                             c.model.text.max_len)),
    'siglip': ('experiments/clip.py:loss=siglip,width=16,embed=16,' + VIT_TOWERS,
               [*TOWER, '--config.model.image.depth=1'],
               lambda rng, c: image_text_batch(rng, c.model.text.vocab_size,
                                               c.model.text.max_len)),
    'clap': ('experiments/clap.py:loss=clip,width=16,embed=16', AUDIO_TOWER,
             lambda rng, c: audio_text_batch(rng, c.model.text.vocab_size,
                                             c.model.text.max_len)),
}


# Each objective's batches are drawn from seed 100 + its place here (append new ones: the
# old-rule check reads lm_unpacked's batches, chosen for their uneven counts).
SEED_ORDER = ('classification', 'clap', 'clip', 'distill', 'lm_moe', 'lm_packed',
              'lm_unpacked', 'mlm', 'seq2seq', 'sft', 'siglip', 'simclr', 'dpo', 'grpo')
assert sorted(SEED_ORDER) == sorted(OBJECTIVES)


def load_config(name: str):
    """The objective's experiment config with its tiny-model overrides (as `jaxbig train`)."""
    spec, overrides, _ = OBJECTIVES[name]
    config = cli.load_config(os.path.join(REPO, spec), list(overrides))
    if name == 'classification':  # a 2-layer ViT backbone (with scan_layers) for the ResNet
        config.model.backbone = dict(defaults.vit_backbone(16, depth=2, patch_size=4),
                                     num_heads=2, scan_layers=False)
    if name == 'grpo':  # experiments/grpo.py needs an init run: its loss section, here
        config.loss = dict(name='grpo', group_size=3, max_new_tokens=4, temperature=1.0,
                           beta=0.04, epsilon=0.2, reward='prefix', reference='',
                           eos_id=EOS)
    if name == 'simclr':
        config.model.backbone.update(depth=2, num_heads=2, scan_layers=False)
        config.model.proj_hidden_dims = (16,)
        config.model.proj_dim = 16
    return config


def batches(name: str, config=None):
    config = config if config is not None else load_config(name)
    rng = np.random.default_rng(100 + SEED_ORDER.index(name))
    return [OBJECTIVES[name][2](rng, config) for _ in range(STEPS)]


def set_switch(model_cfg: dict, field: str, value) -> dict:
    """model_cfg with `field` set to `value` in it and every sub-model dict that has it."""
    out = {}
    for k, v in model_cfg.items():
        out[k] = set_switch(v, field, value) if isinstance(v, dict) else v
    if field in model_cfg:
        out[field] = value
    return out


@dataclasses.dataclass
class Objective:
    """An objective: its config, loss module, loss function (distillation's closes over its
    teacher) and batches; `model(scan, remat)` builds its model with those switches."""

    name: str
    config: Any
    module: Any  # jaxbig.losses.<name>
    loss_fn: Any
    batches: list
    teacher: Any = None

    def model(self, scan: bool = False, remat: str = 'none', attention: str = ''):
        cfg = set_switch(self.config.model.to_dict(), 'scan_layers', scan)
        if remat != 'none':
            assert 'remat' in cfg, self.name
            cfg['remat'] = remat
        if attention:  # the GPT's attention implementation
            assert cfg['name'] == 'gpt', self.name
            cfg['attention'] = attention
        return models.get_model(cfg.pop('name'), **cfg)

    def example(self):
        return self.module.model_inputs(jax.tree.map(lambda x: x[:1], self.batches[0]))


@functools.cache
def objective(name: str) -> Objective:
    config = load_config(name)
    module = losses.get_loss_module(config.loss.name)
    loss_fn = module.loss_fn
    teacher = None
    if name in ('distill', 'dpo', 'grpo'):  # a 1-layer GPT of its own init: the teacher /
        # the reference
        cfg = dict(config.model.to_dict(), num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32)
        t_model = models.get_model(cfg.pop('name'), **cfg)
        t_params = jax.device_get(jit(lambda: t_model.init(
            jax.random.PRNGKey(7), jnp.zeros((1, SEQ), jnp.int32), train=False)['params'])())
        teacher = (t_model, t_params)
        loss_fn = functools.partial(distillation.loss_fn, teacher=teacher)
    if name == 'dpo':
        def reference(apply_fn, params, batch):
            return preference.pair_logps(t_model.apply, t_params, batch, None, False)[0]
        loss_fn = functools.partial(preference.loss_fn, reference=reference)
    if name == 'grpo':
        def reference(apply_fn, params, *args):
            return grpo.completion_logps(t_model.apply, t_params, *args, False)
        loss_fn = functools.partial(grpo.loss_fn, reference=reference)
    return Objective(name, config, module, loss_fn, batches(name, config), teacher)


# ------------------------------------------------------------------------------ layouts

_INDEXED = re.compile(r'(.+)_(\d+)')


def relayout(params, target):
    """`params` rearranged into the tree of `target` (arrays or ShapeDtypeStructs): paths
    in both are copied, a scanned `.../layers/...` [depth, ...] becomes or is built from
    the unrolled `.../layers_<i>/...` (the convention of jaxbig.models.layout)."""
    source = traverse_util.flatten_dict(nn.unbox(params))
    out = {}
    for path, want in traverse_util.flatten_dict(nn.unbox(target)).items():
        if path in source:
            value = source[path]
        else:
            value = None
            for j, part in enumerate(path):
                m = _INDEXED.fullmatch(part)
                stacked = path[:j] + (m.group(1),) + path[j + 1:] if m else None
                if stacked in source:  # unrolled target, scanned source: a slice
                    value = source[stacked][int(m.group(2))]
                    break
                keys = sorted((p for p in source if len(p) == len(path)
                               and p[:j] == path[:j] and p[j + 1:] == path[j + 1:]
                               and (mm := _INDEXED.fullmatch(p[j])) and mm.group(1) == part),
                              key=lambda p: int(_INDEXED.fullmatch(p[j]).group(2)))
                if keys:  # scanned target, unrolled source: a stack
                    value = np.stack([source[p] for p in keys])
                    break
            if value is None:
                raise KeyError(f"relayout: no counterpart for {'/'.join(path)}")
        assert value.shape == want.shape, (path, value.shape, want.shape)
        out[path] = value
    return traverse_util.unflatten_dict(out)


def flat(params) -> dict:
    return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


# ---------------------------------------------------------------------------------- runs

def program(name: str) -> str:
    """The first objective with `name`'s experiment and overrides: objectives that differ
    only in their batches (lm_packed, lm_unpacked) share initial state and compiled steps."""
    return next(o for o in OBJECTIVES if OBJECTIVES[o][:2] == OBJECTIVES[name][:2])


_inits: dict = {}  # program -> reference TrainState (host)
_sharing = {'dir': None, 'theirs': (), 'alive': None}  # see share_inits


def share_inits(directory: str, theirs, alive=None) -> None:
    """Initial states are split between the test process and the device subprocess: this
    one waits for those of the programs in `theirs` (directory/<program>.pkl, written by the
    other process while `alive()`), computes the others and pickles them there."""
    _sharing.update(dir=directory, theirs=set(theirs), alive=alive)


def reference_init(name: str):
    """The reference TrainState (scan off) of objective `name`, on the host (`step.init_fn`,
    jitted as train.py does), computed once (here or, shared, in the other process)."""
    import pickle
    import time

    key = program(name)
    if key in _inits:
        return _inits[key]
    directory = _sharing['dir']
    path = directory and os.path.join(directory, f'{key}.pkl')
    if directory and key in _sharing['theirs']:
        start = time.monotonic()
        while not os.path.exists(path):
            alive = _sharing['alive']
            if time.monotonic() - start > 600 or (alive and not alive()):
                raise RuntimeError(f'no initial state {path} from the other process')
            time.sleep(0.05)
        with open(path, 'rb') as f:
            _inits[key] = pickle.load(f)
        return _inits[key]
    obj = objective(key)
    init = step_lib.init_fn(obj.model(), optimizer(), obj.example(), SEED)
    _inits[key] = jax.device_get(jit(init)())
    if directory:
        with open(path + '.tmp', 'wb') as f:
            pickle.dump(_inits[key], f)
        os.replace(path + '.tmp', path)  # atomically: the other process polls for it
    return _inits[key]


def state_for(obj: Objective, model, *, scan: bool):
    """The initial state of `model`: the reference's; with scan, `step.init_fn` of the
    scanned model (layout-independent since models/layout.py), checked to be the reference's
    numbers stacked (`relayout`)."""
    ref = reference_init(obj.name)
    if not scan:
        return ref
    state = jax.device_get(jit(step_lib.init_fn(model, optimizer(), obj.example(), SEED))())
    stacked = flat(relayout(ref.params, state.params))
    for path, value in flat(state.params).items():
        np.testing.assert_array_equal(value, stacked[path], err_msg=f'scanned init: {path}')
    return state


def train_step(obj: Objective, model, accum: int = 1, pmap_axis=None, logits_chunk: int = 0):
    """As run.train_step_fn builds it (a coupled loss's embed / loss_from_embeddings split
    passed for the gradient cache); logits_chunk > 0 sets loss.logits_chunk."""
    loss_config = obj.config.loss
    if logits_chunk:
        loss_config = ml_collections.ConfigDict(dict(loss_config, logits_chunk=logits_chunk))
    return step_lib.make_train_step(model, obj.loss_fn, loss_config, optimizer(),
                                    accum_steps=accum, pmap_axis=pmap_axis,
                                    coupled=losses.coupled_parts(obj.module))


def result(obj: Objective, state, metrics: list[dict]) -> dict:
    """{'loss': [STEPS], 'metrics': {key: [STEPS]}, 'params': {path: array}} (reference
    layout) from the final state and the per-update metric dicts (host values)."""
    params = relayout(jax.device_get(state.params), reference_init(obj.name).params)
    series = {k: [float(np.asarray(m[k])) for m in metrics] for k in sorted(metrics[0])}
    return dict(loss=series['total_loss'], metrics=series, params=flat(params))


def _per_step(metrics) -> list[dict]:
    """Stacked metrics {key: [n]} -> [n] dicts."""
    metrics = jax.device_get(metrics)
    n = len(next(iter(metrics.values())))
    return [{k: v[i] for k, v in metrics.items()} for i in range(n)]


@functools.cache
def _compiled(key: str, how: str, scan: bool = False, remat: str = 'none', accum: int = 1,
              attention: str = '', logits_chunk: int = 0):
    """(model, step) of program `key`, built and wrapped once: how = 'jit' (one update),
    'multi' (step.multi_step), 'pmap' (pmap.pmap_train_step)."""
    obj = objective(key)
    model = obj.model(scan=scan, remat=remat, attention=attention)
    if how == 'pmap':
        return model, pmap_lib.pmap_train_step(train_step(obj, model, pmap_axis=pmap_lib.AXIS))
    step = train_step(obj, model, accum, logits_chunk=logits_chunk)
    return model, jit(step_lib.multi_step(step) if how == 'multi' else step)


def run_single(name: str, *, accum: int = 1, scan: bool = False, remat: str = 'none',
               steps_per_call: int = 1, attention: str = '', logits_chunk: int = 0) -> dict:
    """One device: STEPS updates, one per call (steps_per_call=2: the first two in one
    `step.multi_step` call, the third by the one-update step); `attention` replaces the
    model's attention implementation ('' = its own); logits_chunk sets loss.logits_chunk."""
    obj = objective(name)
    model, step = _compiled(program(name), 'jit', scan, remat, accum, attention, logits_chunk)
    state = state_for(obj, model, scan=scan)
    metrics, todo = [], list(obj.batches)
    if steps_per_call > 1:
        _, multi = _compiled(program(name), 'multi', scan, remat, accum, attention)
        stacked = jax.tree.map(lambda *x: np.stack(x), *todo[:steps_per_call])
        state, m = multi(state, stacked)
        metrics += _per_step(m)
        todo = todo[steps_per_call:]
    for batch in todo:
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return result(obj, state, metrics)


# ------------------------------------------------------------- several devices (subprocess)

def run_pmap(name: str, devices: int = 2) -> dict:
    """pmap over the first `devices` devices (device d: rows d*R/n ...), replicated state,
    `make_train_step(..., pmap_axis=pmap.AXIS)` through `pmap.pmap_train_step` (state and
    batches placed as `pmap.replicate` / `pmap.shard_batch` place them, on those devices)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    obj = objective(name)
    _, step = _compiled(program(name), 'pmap')
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:devices]), (pmap_lib.AXIS,)),
                             P(pmap_lib.AXIS))
    state = jax.device_put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * devices),
                                        reference_init(name)), sharding)
    metrics = []
    for batch in obj.batches:
        split = jax.tree.map(lambda x: x.reshape(devices, x.shape[0] // devices,
                                                 *x.shape[1:]), batch)
        state, m = step(state, jax.device_put(split, sharding))
        metrics.append(jax.device_get(m))
    state = jax.device_get(state)
    for leaf in jax.tree.leaves(state):  # the replicas stayed identical
        assert all(np.array_equal(leaf[0], leaf[d]) for d in range(devices)), name
    return result(obj, jax.tree.map(lambda x: x[0], state), metrics)


@functools.cache
def _mesh_step(key: str, data: int, fsdp: int):
    """(mesh, state shardings, batch sharding, jitted step) of program `key`, as run.setup
    and train.py build them (logical rules -> state shardings, step.jit_train_step)."""
    import ml_collections

    obj = objective(key)
    model = obj.model()
    cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=1))
    mesh = parallel.make_mesh(cfg, devices=jax.devices()[:data * fsdp])
    rules = parallel.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                reference_init(key))
        boxed = jax.eval_shape(step_lib.init_fn(model, optimizer(), obj.example(), SEED,
                                                boxed=True))
        logical = parallel.state_logical_specs(abstract, nn.get_partition_spec(boxed))
        shardings = parallel.logical_to_shardings(logical, mesh, rules)
        batch_sharding = parallel.batch_sharding(mesh)
        step = step_lib.jit_train_step(train_step(obj, model), shardings, batch_sharding)
    return mesh, rules, shardings, batch_sharding, step


def run_mesh(name: str, data: int = 2, fsdp: int = 2) -> dict:
    """jit on a (data, fsdp, 1) mesh with train.py's state shardings (logical rules) and the
    global batch split over data x fsdp."""
    obj = objective(name)
    mesh, rules, shardings, batch_sharding, step = _mesh_step(program(name), data, fsdp)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.device_put(reference_init(name), shardings)
        metrics = []
        for batch in obj.batches:
            state, m = step(state, parallel.to_global(batch, batch_sharding))
            metrics.append(jax.device_get(m))
    out = result(obj, state, metrics)
    out['sharded_leaves'] = sum(not s.is_fully_replicated
                                for s in jax.tree.leaves(shardings.params))
    return out


RUNS = {'pmap': run_pmap, 'mesh': run_mesh}


def split_inits(runs: list[str]) -> tuple[list[str], list[str]]:
    """The programs of `runs` ('<objective>:<pmap|mesh>'), in order, dealt to (the test
    process, the device subprocess): one in three to the subprocess, whose device runs
    take longer than the test process's single-device ones."""
    programs = list(dict.fromkeys(program(r.split(':')[0]) for r in runs))
    return ([p for i, p in enumerate(programs) if i % 3 != 1],
            [p for i, p in enumerate(programs) if i % 3 == 1])


def device_main(inits_dir: str, out_path: str, runs: list[str]) -> None:
    """The device subprocess: `runs` ('<objective>:pmap' | '<objective>:mesh'). It first
    computes its share of the reference initial states (`split_inits`, `share_inits`),
    then runs, waiting for the test process's share as needed; pickles {run: result, or
    {'error': traceback}} to `out_path` and prints {'devices': n} as its last line."""
    import json
    import pickle
    import traceback

    theirs, mine = split_inits(runs)
    parent = os.getppid()
    share_inits(inits_dir, theirs, alive=lambda: os.getppid() == parent)
    for key in mine:
        reference_init(key)
    out = {}
    for run in runs:
        name, switch = run.split(':')
        try:
            out[run] = RUNS[switch](name)
        except Exception:  # noqa: BLE001 (reported per run; the others still run)
            out[run] = {'error': traceback.format_exc()[-3000:]}
    with open(out_path, 'wb') as f:
        pickle.dump(out, f)
    print(json.dumps({'devices': jax.device_count()}))


if __name__ == '__main__':
    import sys

    device_main(sys.argv[1], sys.argv[2], sys.argv[3:])
