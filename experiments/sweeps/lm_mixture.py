r"""Data-mixture weights for the GPT language model (experiments/lm.py): 3 runs over the
share of two JSONL / Parquet sources (README "Bring your own data").

    jaxbig sweep --config experiments/lm.py --sweep experiments/sweeps/lm_mixture.py \
        --workdir runs/lm_mixture \
        --config.data.mixture='[{"name":"files","path":"code/","label":"code","weight":1},{"name":"files","path":"web/","label":"web","weight":1}]'

The sources are the base command's `data.mixture` (edit the paths); each run sets the
weights of the entries by label (`data.mixture.<label>.weight`, a config key like any other,
also on the command line), so runs are named `code.weight=0.8,web.weight=0.2`. Each run
logs `val/<label>/loss` and `val/<label>/bits_per_byte` per source and the shares it saw
(`data/<label>/share`), which `--report` tabulates.
"""
from jaxbig import sweep


def get_sweep():
    return sweep.zip_(sweep.axis('data.mixture.code.weight', [0.8, 0.5, 0.2]),
                      sweep.axis('data.mixture.web.weight', [0.2, 0.5, 0.8]))
