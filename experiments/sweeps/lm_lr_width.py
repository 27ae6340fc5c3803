r"""Learning rate x width for the GPT language model (experiments/lm.py): 3 x 3 = 9 runs.

    jaxbig sweep --config experiments/lm.py:size=tiny --sweep experiments/sweeps/lm_lr_width.py \
        --workdir runs/lm_lr_width
    jaxbig sweep --workdir runs/lm_lr_width --report

Width moves embed_dim and mlp_dim together (zip_: mlp_dim = 3 x embed_dim, as in the tiny
preset); depth and heads stay those of `size`. Runs are named like
`lr=0.001,embed_dim=64,mlp_dim=192`.
"""
from jaxbig import sweep


def get_sweep():
    width = sweep.zip_(sweep.axis('model.embed_dim', [64, 128, 256]),
                       sweep.axis('model.mlp_dim', [192, 384, 768]))
    return sweep.product(sweep.axis('optimizer.lr', [1e-3, 3e-3, 1e-2]), width)
