"""Shared config sections, so an experiment file states only what is particular to it.

    c.optimizer = defaults.optimizer(lr=3e-3, weight_decay=0.1)
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=600, batch_size=32)

Every key the loop reads exists in these sections (so `--config.x.y=v` overrides always have
a key to check against); keyword arguments replace defaults and may not add unknown keys.
"""

from __future__ import annotations

from jaxbig.errors import ConfigError
from jaxbig.parallel import DEFAULT_RULES


def _merge(section: str, base: dict, overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f'defaults.{section}(): unknown keys {unknown}')
    return {**base, **overrides}


def optimizer(**overrides) -> dict:
    """AdamW, warmup + cosine to 10 % of the peak, global-norm clipping at 1 (see optim.py).
    Weight decay (off by default) applies to the parameters `weight_decay_mask` names by
    path; [] = optim.DEFAULT_WEIGHT_DECAY_MASK: kernels, never norms, biases or embeddings.
    `prune=dict(...)` is merged into `prune()`'s defaults (pruning off: sparsity 0)."""
    if 'prune' in overrides:
        overrides = {**overrides, 'prune': prune(**overrides['prune'])}
    return _merge(
        'optimizer',
        dict(
            name='adamw',
            lr=1e-3,
            schedule='warmup_cosine',
            warmup_steps=0,
            min_lr_ratio=0.1,
            decay_steps=0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            mu_dtype='',
            weight_decay=0.0,
            weight_decay_mask=[],  # regexes of the decayed params; [] = optim's default rules
            l1=0.0,
            l2=0.0,
            clip_norm=1.0,
            momentum=0.9,
            nesterov=False,
            grad_accum_steps=1,
            freeze=[],
            lr_mults=[],
            prune=prune(),
        ),
        overrides,
    )


def prune(**overrides) -> dict:
    """`optimizer.prune`: magnitude pruning (jaxbig/pruning.py, keys in jaxbig/optim.py);
    sparsity 0 = off, e.g. `optimizer(prune=dict(sparsity=0.8, end_step=400, frequency=50))`."""
    return _merge(
        'prune',
        dict(sparsity=0.0, initial_sparsity=0.0, scope='global', begin_step=0, end_step=0,
             frequency=100, targets=[]),
        overrides,
    )


def parallel(**overrides) -> dict:
    """Pure data parallel over every device; multi-host only when asked (see parallel.py)."""
    return _merge(
        'parallel',
        dict(
            strategy='mesh',
            data=-1,
            fsdp=1,
            expert=1,  # Mixture-of-Experts layers: experts split over this many devices
            tensor=1,
            rules=[list(r) for r in DEFAULT_RULES],
            distributed=False,
            coordinator_address='',
            num_processes=0,
            process_id=-1,
            local_device_count=0,
        ),
        overrides,
    )


def train(**overrides) -> dict:
    """Loop cadences in steps; 0 disables a cadence. best_metric '' = no best checkpoint.

    steps_per_call: updates per compiled call (`step.multi_step`: a `lax.scan` over that
    many batches). Above 1 it spreads each call's fixed costs (dispatch; XLA CPU maps and
    zeroes a program's temporaries afresh every call) over several updates: on CPU the tiny
    LM step is ~7 % faster at 4 (benchmarks/RESULTS.md). Calls end at every log, eval and
    checkpoint step, so results are the same updates whatever its value; pick a divisor of
    the cadences (other call lengths compile once each).

    profile_steps: (first, last) writes a `jax.profiler` trace of updates first+1 .. last to
    `<workdir>/profile/` (open with `tensorboard --logdir WORKDIR` and its profile tab, or
    the `.trace.json.gz` in Perfetto); () = off.
    """
    return _merge(
        'train',
        dict(
            steps=1000,
            batch_size=32,
            seed=0,
            steps_per_call=1,
            log_every=20,
            eval_every=200,
            checkpoint_every=200,
            keep_checkpoints=3,
            keep_every=0,
            skip_nonfinite_steps=False,
            debug_nan_at_step=0,
            best_metric='',
            best_mode='max',
            patience=0,
            profile_steps=(),
        ),
        overrides,
    )


def data_loading(**overrides) -> dict:
    """Keys every `data` section has, whatever its pipeline (`complete_data` adds those an
    experiment leaves out, so `--config.data.prefetch=0` works for every experiment).

    prefetch: host batches of this many compiled calls are built ahead of the step by a
    background thread (jaxbig/data/prefetch.py), in order; 0 = off (built between steps).
    """
    return _merge('data', dict(prefetch=2), overrides)


def complete_data(config) -> None:
    """Adds the missing `data_loading()` keys to `config.data` (if any), in place; called by
    `config.load` and `train.train`, so configs built in code get them too."""
    data = config.get('data')
    if data is None:
        return
    with data.unlocked():
        for key, value in data_loading().items():
            if key not in data:
                data[key] = value


# ----------------------------------------------------------------------------- shared recipes
# Sections several experiments share, so each file states only what is particular to it.

def moe(**overrides) -> dict:
    """model.moe: the Mixture-of-Experts feed-forward (jaxbig.models.moe.MoeSpec); experts=0
    is a dense model. Its losses' coefficients are in the loss section (`lm_loss`)."""
    return {**dict(experts=0, experts_per_token=2, expert_dim=0, shared_experts=0,
                   normalize=True, dispatch='dropless', capacity_factor=1.25, grouped='auto',
                   bias_rate=0.0, first_dense=0, shared_gate=False),
            **overrides}


def gpt(shape: dict, **overrides) -> dict:
    """The GPT model section for a `jaxbig.models.gpt.SIZES` shape, bytes vocab (256), no
    dropout, tied embeddings, float32, dense (moe.experts=0); scan_layers / remat 'auto'
    (experiment.resolve_auto)."""
    return {**dict(name='gpt', vocab_size=256, **shape, dropout=0.0, tie_embeddings=True,
                   scan_layers='auto', remat='auto', dtype='float32', param_dtype='float32',
                   moe=moe()),
            **overrides}


def lm_loss(**overrides) -> dict:
    """Next-token cross-entropy (jaxbig.losses.autoregressive): z_loss off, the whole
    sequence's logits at once (logits_chunk 0); a MoE model's
    load-balancing loss 0.01 (Switch) and router z-loss 0.001 (ST-MoE), balanced per row
    (jaxbig.losses.moe_aux); a dense model ignores the moe_* keys."""
    return {**dict(name='autoregressive', z_loss=0.0, logits_chunk=0, moe_balance=0.01,
                   moe_z_loss=0.001, moe_balance_group='sequence'), **overrides}


def lm_data(name: str = 'pystdlib', seq_len: int = 128, **overrides) -> dict:
    """Packed token sequences (`jaxbig.data.pipelines.lm`) of a TFDS text dataset or a folder."""
    return _merge(
        'lm_data',
        dict(
            pipeline='lm',  # jaxbig.data.pipelines.lm: packed token sequences
            name=name,
            data_dir='',  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
            path='',  # data.name='folder': a folder; 'files': JSONL / Parquet file, dir or glob
            text_key='text',
            splits='',  # data.name='files': 'validation=0.01' (default) or name=glob pairs
            mixture=[],  # [dict(name=..., weight=w, label=...), ...]: jaxbig.data.mixture
            seq_len=seq_len,
            pack=True,
            train_split='train',
            val_split='validation',
            tokenizer='bytes',  # or a tokenizer.json path (jaxbig.data.text.tokenizers)
            eos_id=-1,  # the tokenizer's end-of-sequence id (bytes: NUL)
            **data_loading(),
        ),
        overrides,
    )


def conditional_data(task: str = 'name', seq_len: int = 256, **overrides) -> dict:
    """(prompt, response) examples of the embedded corpus (`jaxbig.data.pipelines.conditional`):
    task 'name' (a function without its name -> the name) | 'body' (signature and
    docstring -> the body); the loss mask covers response tokens only."""
    return _merge(
        'conditional_data',
        dict(
            pipeline='conditional',
            name='pystdlib',  # or 'files': chat conversations (data.path, splits, messages_key)
            data_dir='',  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
            task=task,
            path='',
            splits='',  # data.name='files': 'validation=0.01' (default) or name=glob pairs
            messages_key='messages',
            seq_len=seq_len,
            pack=True,  # several examples per row, attention kept within each (segment_ids)
            train_split='train',
            val_split='validation',
            tokenizer='bytes',  # or a tokenizer.json / SentencePiece .model path
            eos_id=-1,  # the tokenizer's end-of-sequence id (bytes: NUL); ends responses
            **data_loading(),
        ),
        overrides,
    )


def preference_data(task: str = 'name', seq_len: int = 256, **overrides) -> dict:
    """(prompt, chosen, rejected) pairs (`jaxbig.data.pipelines.preference`): the embedded
    task built from the conditional one (name 'pystdlib', task 'name' | 'body'), or
    name='files' with JSONL / Parquet records at `path`; one pair per row of `seq_len`."""
    return _merge(
        'preference_data',
        dict(
            pipeline='preference',
            name='pystdlib',  # or 'files' (data.path, data.splits, data.*_key)
            data_dir='',  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
            task=task,
            path='',
            splits='',  # data.name='files': 'validation=0.01' (default) or name=glob pairs
            prompt_key='prompt',
            chosen_key='chosen',
            rejected_key='rejected',
            seq_len=seq_len,
            train_split='train',
            val_split='validation',
            tokenizer='bytes',
            eos_id=-1,
            **data_loading(),
        ),
        overrides,
    )


def lm_optimizer(**overrides) -> dict:
    """The LM recipe: AdamW at 3e-3, 5 % warmup, b2 0.95, weight decay 0.1."""
    return optimizer(**{**dict(lr=3e-3, warmup_steps='auto', b2=0.95, weight_decay=0.1),
                        **overrides})


def lm_evals(num_examples: int = 256) -> dict:
    """Validation loss (nats/token, perplexity, accuracy) on the first `num_examples`
    sequences of the val split's fixed order, each once (0 = the whole split; 256 = the 8
    batches of 32 the evaluator read before it counted examples)."""
    return dict(val=dict(type='loss', split='validation', num_examples=num_examples,
                         batch_size=0))


def conditional_run(c, arg, loss: str) -> None:
    """The optimizer, parallel, train, evals and lora sections of the conditional-generation
    experiments (experiments/sft.py, experiments/seq2seq.py), set on `c`: `loss` with no
    z-loss; AdamW at arg.lr (default 1e-3 from an init run, else 3e-3); evaluation and
    checkpoints at half-way and the end; validation loss on every held-out example plus
    generated-text metrics."""
    c.loss = lm_loss() if loss == 'autoregressive' else dict(name=loss, z_loss=0.0)
    c.optimizer = lm_optimizer(lr=arg.lr or (1e-3 if arg.init else 3e-3))
    c.parallel = parallel()
    c.train = train(steps=arg.steps, batch_size=arg.batch, steps_per_call=4,
                    eval_every=max(arg.steps // 2, 1), checkpoint_every=max(arg.steps // 2, 1))
    c.evals = dict(
        **lm_evals(num_examples=0),
        gen=dict(type='generation', split='validation', num_examples=128, batch_size=0,
                 max_new_tokens=0),
    )
    c.lora = dict(targets=[], rank=8, alpha=16.0)


def take_over_gpt(c, source, init: str, where: str, needs: str) -> None:
    """Sets c.model and c.data's tokenizer / eos_id from `source`, the config of the run in
    `init` (a GPT: jaxbig's own or imported); one-line ConfigError for any other model."""
    name = source.model.get('name')
    if name != 'gpt':
        raise ConfigError(f'{where}: init={init!r} is a {name!r} run; {needs} needs a GPT')
    c.model = source.model.to_dict()
    data = source.get('data') or {}
    c.data.tokenizer = data.get('tokenizer', 'bytes')
    c.data.eos_id = data.get('eos_id', -1)


def init_from(**overrides) -> dict:
    """Load another run's params (jaxbig/finetune.py); path '' = from scratch."""
    return _merge('init_from', dict(path='', step=-1, rename=[], include=[], exclude=[]),
                  overrides)


def folds(**overrides) -> dict:
    """`data.folds`: k-fold cross-validation of the training split (jaxbig/data/folds.py);
    k=0 = off. With k >= 2 the training split is every row outside fold `index`, and the
    split 'fold' is that fold (stratified by label; fold assignment seeded by `seed`)."""
    return _merge('folds', dict(k=0, index=0, seed=0, stratify=True), overrides)


def finetune_train(steps: int, batch_size: int, **overrides) -> dict:
    """Fine-tuning cadence: evaluate and checkpoint every 100 steps, keep 2, keep the best
    by validation accuracy."""
    return train(**{**dict(steps=steps, batch_size=batch_size, eval_every=100,
                           checkpoint_every=100, keep_checkpoints=2,
                           best_metric='val/accuracy', best_mode='max'), **overrides})


def pretrain_train(steps: int, batch_size: int, **overrides) -> dict:
    """Contrastive pretraining cadence: evaluate and checkpoint halfway and at the end."""
    half = max(steps // 2, 1)
    return train(**{**dict(steps=steps, batch_size=batch_size, eval_every=half,
                           checkpoint_every=half), **overrides})


def vit_backbone(width: int, depth: int, patch_size: int) -> dict:
    """A small ViT feature extractor (no head): 4 heads, MLP 2x width, mean pooling, scan."""
    return dict(name='vit', patch_size=patch_size, width=width, depth=depth, num_heads=4,
                mlp_dim=2 * width, pool='mean', dropout=0.0, scan_layers=True, num_classes=0)


def resnet_backbone(variant: str, width: int, stem: str = 'small') -> dict:
    """A ResNet / plain-CNN feature extractor (no head), GroupNorm of 8 groups."""
    return dict(name='resnet', variant=variant, width=width, stem=stem, norm_groups=8,
                cnn_layers=3, num_classes=0)


def features_eval(kind: str, **overrides) -> dict:
    """A frozen-features evaluator ('linear_probe' or 'knn') at the end of the run, on up to
    10k train / 5k test examples of the data's own splits."""
    extra = dict(C=1.0) if kind == 'linear_probe' else dict(k=20)
    return {**dict(type=kind, every=0, method='features', train_split='', test_split='',
                   max_train=10000, max_test=5000, batch_size=0, **extra), **overrides}
