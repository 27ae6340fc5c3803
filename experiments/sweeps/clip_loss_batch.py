r"""CLIP (softmax) vs SigLIP (sigmoid) x batch size on the embedded shapes data
(experiments/clip.py): 2 x 3 = 6 runs.

    jaxbig sweep --config experiments/clip.py:data=shapes --sweep experiments/sweeps/clip_loss_batch.py \
        --workdir runs/clip_loss_batch

The loss is the config-file argument `loss` (the ':loss' key): besides `loss.kind` it sets the
two-tower model's logit scale / bias initialisation, so it cannot be one config key. The batch
is `train.batch_size` (contrastive losses see batch - 1 negatives per example, which is the
point of the ablation). Learning rate and steps stay fixed.
"""
from jaxbig import sweep


def get_sweep():
    return sweep.product(sweep.axis(':loss', ['clip', 'siglip']),
                         sweep.axis('train.batch_size', [32, 64, 128]))
