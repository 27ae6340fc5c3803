r"""Fine-tuning mode for the text task (experiments/finetune_text.py): full, linear probe, LoRA.

    jaxbig train --config experiments/lm.py --workdir runs/lm          # the pretrained backbone
    jaxbig sweep --config experiments/finetune_text.py:init=runs/lm \
        --sweep experiments/sweeps/finetune_mode.py --workdir runs/ft_mode

The mode is the config-file argument `mode` (the ':mode' key), merged into the --config
argument (`...:init=runs/lm,mode=lora`): the config derives `optimizer.freeze`,
`optimizer.lr_mults` and the `lora` section (adapters on the attention query/value kernels,
rank 8, alpha 16) from it, so sweeping the argument keeps them consistent. `features` (a
head on stored backbone features) is left out: it needs `init=` and trains a different
model (`linear`); add it with `sweep.chain(...)` when comparing speed. Without `init=` the
modes start from a random backbone (a sanity check only).
"""
from jaxbig import sweep


def get_sweep():
    return sweep.axis(':mode', ['full', 'linear_probe', 'lora'])
