r"""Ablation sweeps: one sweep file -> many `jaxbig train` runs -> one results table + plots.

A sweep file defines `get_sweep()` returning a list of override dicts, built with the
helpers below (the big_vision / scenic habit):

    from jaxbig import sweep

    def get_sweep():
        return sweep.product(sweep.axis('optimizer.lr', [1e-3, 3e-3]),
                             sweep.axis('model.embed_dim', [64, 128]))

Keys are config keys (`optimizer.lr`) or, with a leading colon, config-file arguments
(`':mode'` turns `experiments/finetune_text.py:init=runs/lm` into `...:init=runs/lm,mode=...`).
`sweep.kfold(5)` is k-fold cross-validation as an axis (one run per held-out fold of the
training split, `data.folds`); the report then adds a row per configuration with each
metric's mean ± std over its folds (results_cv.csv).

    jaxbig sweep --config experiments/lm.py:size=tiny --sweep experiments/sweeps/lm_lr_width.py \
        --workdir runs/sweep1 [--parallel 2] [--config.train.steps=100]
    jaxbig sweep --workdir runs/sweep1 --report

Each run trains in its own subprocess (`python -m jaxbig train`) in `<workdir>/<run name>/`,
its output in `train.log` there. `<workdir>/sweep.json` records every run's status (pending,
running, done, failed + the error's last line, stopped, submitted); rerunning the command
skips done runs, resumes the others from their checkpoints and keeps failed ones failed
unless `--retry-failed`. SIGTERM/SIGINT stop the running trainings (each saves a
checkpoint); if the sweep process is killed outright, its trainings get SIGTERM (Linux) and
the next launch stops any survivor before resuming it. `--launcher slurm` submits one
`sbatch launch/slurm.sbatch` job per run (and returns); `--launcher tpu` runs each run in
turn through `launch/tpu_pod.sh run` (TPU_NAME / TPU_ZONE from the environment); both need
the launch/ scripts of a source checkout of the repository (they are not packaged).
The report (results.csv, results.md, PNGs) is written at the end and by `--report`.

The package: plan.py (the helpers; sweep file -> named runs with their overrides),
state.py (sweep.json), runner.py (local runs, --parallel, resume, failures), launchers.py
(train commands for local / slurm / tpu, --dry-run, SLURM submission), report.py (results
table and plots; imported only when a report is written), cv.py (the k-fold table), cli.py
(`add_parser`, `run`).
"""

from jaxbig.sweep.cli import add_parser, run
from jaxbig.sweep.launchers import train_command
from jaxbig.sweep.plan import (
    arg_value,
    axis,
    chain,
    fixed,
    fold_keys,
    kfold,
    load_sweep,
    plan_runs,
    product,
    run_names,
    run_spec,
    zip_,
)
from jaxbig.sweep.runner import Runner
from jaxbig.sweep.state import LOG_FILE, STATE_FILE, State, finished, last_line

__all__ = [
    'LOG_FILE', 'STATE_FILE', 'Runner', 'State', 'add_parser', 'arg_value', 'axis', 'chain',
    'finished', 'fixed', 'fold_keys', 'kfold', 'last_line', 'load_sweep', 'plan_runs', 'product', 'run',
    'run_names', 'run_spec', 'train_command', 'zip_',
]
