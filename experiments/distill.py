r"""Distillation: a small GPT student learns a trained teacher's softened outputs.

    jaxbig train --config experiments/lm.py --workdir runs/lm                # the teacher
    jaxbig train --config experiments/distill.py:teacher=runs/lm --workdir runs/student

Arguments (`experiments/distill.py:key=value,...`):
  teacher       a trained workdir (its config.json and latest checkpoint); data must match
  size          the student's shape: 'student' (2 layers, 64 wide) or any gpt SIZES name
  steps, batch, seq, data   as in experiments/lm.py
  temperature   T of the softened distributions; alpha: weight of T^2 * KL vs hard-label CE

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults distill`: README's
commands as written; the teacher is README's default runs/lm, val 1.461 nats/byte; 2-core CPU):

    jaxbig train --config experiments/distill.py:teacher=runs/lm --workdir runs/student
        (600 steps) val/loss 1.630 nats/byte = 2.352 bits/byte on 256 validation sequences,
        val/kl to the teacher 0.203; 2.2 min wall, 177 s CPU

Measured 2026-12-07, 150 steps (teacher = the default runs/lm, val 1.458; this student,
val loss on the same 256 validation sequences): from scratch 2.261 (scan_layers on and off
alike: 2.26056 both, now that scan is a speed switch only), from scratch with seed 1 2.331;
distilled, T=1, alpha=0.5: 2.231. The gain (0.030) is smaller than the seed-to-seed spread
of the baseline (0.071): at this budget it is not established. Before 2026-12-06 (old rules:
rank-based weight decay, a layout-dependent init) the same comparison read from scratch
2.270 (unrolled: 2.222), T=1, alpha=0.5 2.216, alpha=0.9 2.215, T=2, alpha=0.5 2.334 — its
gain was smaller than the scan on/off gap of its own baseline. Default T=1.

Everything but `model` and `loss` is experiments/lm.py. Train the same student from
scratch for comparison: `experiments/lm.py` with the student's shape, e.g.
`--config.model.num_layers=2 --config.model.embed_dim=64 --config.model.num_heads=4
--config.model.mlp_dim=192`.
"""

import os

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg
from jaxbig.models.gpt import SIZES
from jaxbig.run import read_config


STUDENT = dict(num_layers=2, num_heads=4, embed_dim=64, mlp_dim=192)


def get_config(arg=None):
    arg = parse_arg(
        arg,
        teacher='runs/lm',
        size='student',
        steps=600,
        batch=32,
        seq=128,
        data='pystdlib',
        temperature=1.0,
        alpha=0.5,
    )
    sizes = dict(SIZES, student=STUDENT)
    if arg.size not in sizes:
        raise ConfigError(
            f'experiments/distill.py: size={arg.size!r}, expected one of {list(sizes)}'
        )
    c = ml_collections.ConfigDict()

    # vocab 'auto' follows data.tokenizer: the teacher's own (an imported GPT-2's BPE), so
    # that student and teacher logits share one vocabulary; 256 bytes otherwise
    c.model = defaults.gpt(sizes[arg.size], scan_layers=True, remat='none', vocab_size='auto')
    c.data = defaults.lm_data(arg.data, arg.seq)
    if os.path.isfile(os.path.join(arg.teacher, 'config.json')):
        teacher = read_config(arg.teacher).get('data') or {}
        c.data.tokenizer = teacher.get('tokenizer', 'bytes')
        c.data.eos_id = teacher.get('eos_id', -1)
    c.loss = dict(
        name='distillation',
        teacher=arg.teacher,
        temperature=arg.temperature,
        alpha=arg.alpha,
        z_loss=0.0,
    )
    c.optimizer = defaults.lm_optimizer()
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch)
    c.evals = defaults.lm_evals()
    return c
