r"""CLAP: audio-text contrastive training, CLIP (softmax) or SigLIP (sigmoid) loss, on the
two-tower model with an audio tower (log-mel front end in JAX + a ViT over 8 x 8 spectrogram
patches), evaluated by zero-shot classification from caption prompts and audio<->text
retrieval.

    jaxbig train --config experiments/clap.py:loss=clip --workdir runs/clap
    jaxbig train --config experiments/clap.py:loss=siglip --workdir runs/clap_siglip
    jaxbig train --config experiments/clap.py:data=folder,path=/my/clips --workdir runs/mine

Arguments (`experiments/clap.py:key=value,...`):
  loss       'clip' (temperature init 0.07) | 'siglip' (t' = log 10, b = -10)
  data       'audio_captions' (embedded: synthesised 1 s clips at 16 kHz with compositional
             captions, 4,000 train / 1,000 test; see jaxbig/data/builders/audio_captions.py) |
             'folder' (your WAV files: `path` holds train.tsv and test.tsv with
             'clip.wav<TAB>caption' lines; byte tokenizer, retrieval only; see
             jaxbig/data/pipelines/audio_text.py)
  audio      audio tower backbone over the log-mel image: 'vit' | 'cnn' | 'resnet18'
  text_pool  text tower pooling: 'eos' | 'mean'
  width      tower width; embed: shared embedding width; steps; batch; lr

The front end (jaxbig/models/audio.py): 512-sample Hann frames every 256 samples (32 ms /
16 ms), 64 HTK mel bands 0-8 kHz, log with a -60 dB floor, standardised per clip: a 1 s
clip is a 61 x 64 image (padded to 64 x 64 for the ViT). It runs on device in the step.

Zero-shot on audio_captions: the 15 register-kind classes ('low tone', 'high rising chirp',
...; chance 6.7 %), each prompted with the 6 timbre x tempo templates ('a bright {} in fast
pulses', ...) and ensembled. Retrieval over the 1,000 test clips, where a clip's correct
texts are all clips' identical captions (90 distinct captions; i2t R@1 chance 1.2 %).

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults clap`: README's command as
written; defaults: vit width 64 depth 3, 600 steps, batch 128, lr 1e-3; 2-core CPU; a2t =
`retrieval/i2t_r{k}`, the metric names keep the image-text spelling):

    jaxbig train --config experiments/clap.py:loss=clip --workdir runs/clap
        zero-shot 57.0 % (chance 6.7 %); retrieval a2t R@1/5/10 84.1 / 84.3 / 87.9 %,
        t2a 90.3 / 100 / 100 % (a2t R@1 chance 1.2 %); learned exp(t) 14.3 -> 17.6;
        3.2 min wall incl. preparing the data, compile and evals (262 s CPU)

Measured before 2026-12-06 under the old rules of README "What the numbers mean" (not
re-measured; wall times on a CPU shared with four other jobs, so upper bounds):
  loss=clip:   zero-shot 57.7 %, a2t R@1 84.1 % (the same as today's run, within 1 point).
  loss=siglip: zero-shot 36.1 %; a2t R@1/5/10 63.8 / 64.3 / 71.0 %, t2a 69.9 / 98.3 / 100 %;
               exp(t') 10.0 -> 10.3, b -10 -> -10.1; 5 min 37 s wall (3 min 38 s user CPU).
  audio=cnn (clip, 300 steps): zero-shot 57.5 %, a2t R@1 89.2 %, t2a R@1 96.7 %; 14 min 53 s
               wall (5 min 42 s user CPU): more learned per step than with the ViT, at about
               twice the cost of a step.
a2t R@5 barely exceeds R@1: a clip's ~11 correct texts are identical captions, whose equal
embeddings take the top ranks together, right or wrong. At 300 steps CLIP's zero-shot is
16.3 % (a2t R@1 44.1 %): the kind of sound (tone / chord / chirp / noise) is learned last.
"""

import math

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.data.builders import audio_captions

LOSSES = {
    'clip': dict(logit_scale_init=math.log(1 / 0.07), use_bias=False, logit_bias_init=0.0),
    'siglip': dict(logit_scale_init=math.log(10.0), use_bias=True, logit_bias_init=-10.0),
}
DATA = ('audio_captions', 'folder')


def audio_backbone(name: str, width: int) -> dict:
    """The image backbone the audio tower runs over the log-mel spectrogram image."""
    if name == 'vit':
        return defaults.vit_backbone(width, depth=3, patch_size=8)
    if name in ('resnet18', 'cnn'):
        return defaults.resnet_backbone(name, width // 4 if name == 'resnet18' else width // 2)
    raise ConfigError(f"experiments/clap.py: audio={name!r}, expected 'vit', 'resnet18' or 'cnn'")


def get_config(arg=None):
    arg = parse_arg(
        arg,
        loss='clip',
        data='audio_captions',
        path='',
        audio='vit',
        text_pool='eos',
        width=64,
        embed=64,
        steps=600,
        batch=128,
        lr=1e-3,
    )
    if arg.loss not in LOSSES:
        raise ConfigError(f'experiments/clap.py: loss={arg.loss!r}, expected one of {list(LOSSES)}')
    if arg.data not in DATA:
        raise ConfigError(f'experiments/clap.py: data={arg.data!r}, expected one of {list(DATA)}')
    embedded = arg.data == 'audio_captions'
    tokenizer, max_len = ('words', 10) if embedded else ('bytes', 64)
    c = ml_collections.ConfigDict()
    c.model = dict(
        name='two_tower',
        image=dict(  # the first tower: waveforms [B, samples] -> features
            name='audio',
            backbone=audio_backbone(arg.audio, arg.width),
            sample_rate=16000,
            n_fft=512,
            hop=256,
            n_mels=64,
            fmin=0.0,
            fmax=0.0,  # 0 = sample_rate / 2
            log_floor=1e-6,
        ),
        text=dict(
            name='text_encoder',
            vocab_size=3 + len(audio_captions.words()) if embedded else 258,
            max_len=max_len,
            width=arg.width,
            depth=2,
            num_heads=4,
            mlp_dim=2 * arg.width,
            pool=arg.text_pool,
            pad_id=0,
            eos_id=1,
            dropout=0.0,
            scan_layers=True,
        ),
        embed_dim=arg.embed,
        **LOSSES[arg.loss],
    )
    c.data = dict(
        pipeline='audio_text',  # jaxbig.data.pipelines.audio_text: audio, caption tokens, label
        name=arg.data,
        data_dir='',  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
        path=arg.path,  # data=folder: the folder with train.tsv / test.tsv and the WAVs
        sample_rate=16000,  # must equal model.image.sample_rate
        duration_ms=1000,  # every clip is cut / zero-padded to this length
        num_train=4000,
        num_test=1000,
        audio_seed=0,  # audio_captions builder config
        audio_key='audio',
        text_key='caption',
        label_key='label' if embedded else '',
        tokenizer=tokenizer,
        max_len=max_len,
        train_split='train',
        val_split='test',
    )
    c.loss = dict(name='multimodal', kind=arg.loss, max_logit_scale=math.log(100.0))
    c.optimizer = defaults.optimizer(
        lr=arg.lr,
        warmup_steps='auto',
        min_lr_ratio=0.0,
        b2=0.98,
        eps=1e-6,
        weight_decay=1e-4,
    )
    c.parallel = defaults.parallel()
    c.train = defaults.pretrain_train(arg.steps, arg.batch)
    c.evals = dict(
        retrieval=dict(type='retrieval', every=0, split='', max_examples=1000, ks=(1, 5, 10),
                       batch_size=0, input_key='audio'),
    )
    if embedded:
        c.evals.zero_shot = dict(
            type='zero_shot',
            every=0,
            split='',
            class_names=[],  # the ClassLabel names of data.label_key
            templates=audio_captions.zero_shot_templates(),
            max_examples=0,
            batch_size=0,
            input_key='audio',
        )
    return c
