r"""Fine-tuning mode for the text task (experiments/finetune_text.py): full vs linear probe.

    jaxbig train --config experiments/lm.py --workdir runs/lm          # the pretrained backbone
    jaxbig sweep --config experiments/finetune_text.py:init=runs/lm \
        --sweep experiments/sweeps/finetune_mode.py --workdir runs/ft_mode

The mode is the config-file argument `mode` (the ':mode' key), merged into the --config
argument (`...:init=runs/lm,mode=linear_probe`): the config derives `optimizer.freeze` and
`optimizer.lr_mults` from it, so sweeping the argument keeps them consistent (sweeping
`optimizer.freeze` directly would work too, but would not follow future modes). `lora` is
not in the list because finetune_text.py does not implement it yet; add it to MODES when it
does. Without `init=` both modes start from a random backbone (a sanity check only).
"""
from jaxbig import sweep


def get_sweep():
    return sweep.axis(':mode', ['full', 'linear_probe'])
