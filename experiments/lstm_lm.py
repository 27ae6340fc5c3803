r"""LSTM language model on the embedded corpus, bytes: experiments/lm.py with the model swapped.

    jaxbig train --config experiments/lstm_lm.py --workdir runs/lstm
    jaxbig generate --workdir runs/lstm --prompt "import " --max-new-tokens 100

Arguments (`experiments/lstm_lm.py:key=value,...`):
  size    tiny (2 x 256) | small (2 x 512) | medium (2 x 1024): layers x hidden units
  steps, batch, seq, data   as in experiments/lm.py

Only `model` differs from experiments/lm.py; loss, data, optimizer and loop are the same.

Measured 2026-12-07 (`python benchmarks/research.py --check-defaults lstm_lm`: README's command
as written; 2-core CPU):

    jaxbig train --config experiments/lstm_lm.py --workdir runs/lstm
        (tiny, 600 steps, batch 32 x 128 bytes) val/bits_per_byte 2.468 = 1.711 nats/byte,
        next-byte accuracy 56.5 % on 256 validation sequences (the GPT of experiments/lm.py
        on the same budget: 2.107); 4.4 min wall, 361 s CPU
"""

import ml_collections

from jaxbig import defaults
from jaxbig.config import ConfigError, parse_arg

SIZES = {
    'tiny': dict(num_layers=2, embed_dim=64, hidden_dim=256),
    'small': dict(num_layers=2, embed_dim=128, hidden_dim=512),
    'medium': dict(num_layers=2, embed_dim=256, hidden_dim=1024),
}


def get_config(arg=None):
    arg = parse_arg(arg, size='tiny', steps=600, batch=32, seq=128, data='pystdlib')
    if arg.size not in SIZES:
        raise ConfigError(
            f'experiments/lstm_lm.py: size={arg.size!r}, expected one of {list(SIZES)}'
        )
    c = ml_collections.ConfigDict()

    c.model = dict(
        name='lstm',
        vocab_size=256,
        **SIZES[arg.size],
        dropout=0.0,
        dtype='float32',
        param_dtype='float32',
    )
    c.data = defaults.lm_data(arg.data, arg.seq)
    c.loss = defaults.lm_loss()
    c.optimizer = defaults.lm_optimizer()
    c.parallel = defaults.parallel()
    c.train = defaults.train(steps=arg.steps, batch_size=arg.batch)
    c.evals = defaults.lm_evals()
    return c
