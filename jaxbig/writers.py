"""Where metrics go: `metrics.jsonl`, TensorBoard events, a loss-curve PNG (and, for a
Mixture-of-Experts model, `moe_load.png`: each layer's expert load over training).

Only process 0 writes; other processes get a writer that does nothing.
Each JSONL line is one logged step: {"step": int, "train/loss": float, "val/loss": ...}.
"""

from __future__ import annotations

import json
import math
import os

import jax

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'loss_curve.png'
MOE_PLOT_FILE = 'moe_load.png'
MOE_LAYER_KEY = 'train/moe_load_imbalance/layer_'


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=workdir, flush_secs=30)
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')

    def write(self, step: int, metrics: dict[str, float]):
        if not self.enabled:
            return
        row = {'step': int(step)}
        row.update({k: float(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + '\n')
        self._jsonl.flush()
        for k, v in metrics.items():
            if math.isfinite(float(v)):
                self._tb.add_scalar(k, float(v), int(step))

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `workdir/metrics.jsonl`; a resumed run's rows replace the dropped ones."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row['step'], {}).update(row)
    return [rows[s] for s in sorted(rows)]


def plot_loss_curve(workdir: str, keys=('train/loss', 'val/loss')) -> str | None:
    """Writes `workdir/loss_curve.png` from metrics.jsonl; returns its path (None if no data)."""
    rows = read_metrics(workdir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(r['step'], r[key]) for r in rows if key in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker='o' if len(xs) < 20 else None, label=key)
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = os.path.join(workdir, PLOT_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_moe_load(workdir: str) -> str | None:
    """Writes `workdir/moe_load.png`: each MoE layer's load imbalance (tokens of its busiest
    expert / the mean; 1 = even) against the step, from metrics.jsonl; None if the run logged
    none (a dense model)."""
    rows = read_metrics(workdir)
    layers = sorted({k for r in rows for k in r if k.startswith(MOE_LAYER_KEY)},
                    key=lambda k: int(k[len(MOE_LAYER_KEY):]))
    if not layers:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap('viridis')
    for i, key in enumerate(layers):
        points = [(r['step'], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), color=cmap(i / max(len(layers) - 1, 1)),
                label=f'layer {key[len(MOE_LAYER_KEY):]}' if len(layers) <= 12 else None)
    ax.axhline(1.0, ls=':', color='gray')
    ax.set_xlabel('step')
    ax.set_ylabel('busiest expert / mean (1 = even)')
    ax.grid(alpha=0.3)
    if len(layers) <= 12:
        ax.legend(fontsize=8)
    ax.set_title(f'{os.path.basename(os.path.abspath(workdir))}: expert load per layer')
    fig.tight_layout()
    path = os.path.join(workdir, MOE_PLOT_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
