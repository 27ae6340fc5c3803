"""The report of a sweep: results.csv / results.md (one row per run) and PNG plots.

Columns: run, status, each swept key, steps (last logged), final train/loss, every other
logged metric (val/..., zero_shot/..., retrieval/...) final and best (min for losses,
perplexities and bits per byte, max otherwise; LM runs log val/bits_per_byte, which compares
runs across tokenizers), parameter count, wall time (seconds the sweep spent running
it), error. Values are read from each run's own metrics.jsonl. Plots: `loss_curves.png`
(train/loss of every run, val/loss dashed) and `final_vs_<key>.png` for each swept key
(one panel per final metric; one line per combination of the other swept keys).

A sweep with a k-fold axis (`sweep.kfold`, see cv.py) adds results_cv.csv and, first in
results.md, one row per configuration: each value's mean ± sample std (ddof=1) over its
folds. Its `final_vs_<key>` plots show those means with ±1 std error bars, and
`final_vs_<...>folds.index.png` each fold's value (the axis's constant keys get no plot).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re

from jaxbig import writers
from jaxbig.sweep import cv

CSV_FILE, MD_FILE, CURVES_FILE = 'results.csv', 'results.md', 'loss_curves.png'
LOWER_IS_BETTER = ('loss', 'perplexity', 'error', 'nll', 'bits_per_byte')
MAX_PANELS = 9


def lower_is_better(metric: str) -> bool:
    return any(word in metric.rsplit('/', 1)[-1] for word in LOWER_IS_BETTER)


def collect(workdir: str, state: dict) -> tuple[list[str], list[str], list[dict], dict]:
    """(swept keys, eval metrics, one row per run, {run: metrics rows})."""
    swept = list(dict.fromkeys(k for r in state['runs'].values() for k in r.get('overrides', {})))
    series, metrics = {}, set()
    for name in state['runs']:
        series[name] = writers.read_metrics(os.path.join(workdir, name))
        metrics.update(k for row in series[name] for k in row
                       if k != 'step' and not k.startswith('train/'))
    metrics = sorted(metrics)
    rows = []
    for name, entry in state['runs'].items():
        rs = series[name]
        status = entry['status']
        if status in ('submitted', 'running') and _complete(workdir, name, rs):
            status = 'done'
        row = {'run': name, 'status': status}
        row.update({k: entry.get('overrides', {}).get(k, '') for k in swept})
        row['steps'] = rs[-1]['step'] if rs else ''
        row['train/loss'] = _last(rs, 'train/loss')
        for m in metrics:
            values = [r[m] for r in rs if m in r and math.isfinite(r[m])]
            row[m] = _last(rs, m)
            row[f'best {m}'] = ((min if lower_is_better(m) else max)(values)) if values else ''
        num = _last(rs, 'train/num_params')
        row['num_params'] = int(num) if num != '' else ''
        row['wall_s'] = entry.get('wall_s', '')
        row['error'] = entry.get('error', '')
        rows.append(row)
    return swept, metrics, rows, series


def _last(rows: list[dict], key: str):
    for r in reversed(rows):
        if key in r:
            return r[key]
    return ''


def _complete(workdir: str, name: str, rows: list[dict]) -> bool:
    path = os.path.join(workdir, name, 'config.json')
    if not rows or not os.path.exists(path):
        return False
    with open(path) as f:
        return rows[-1]['step'] >= json.load(f)['train']['steps']


def write_report(workdir: str, state: dict) -> list[str]:
    """Writes the table and the plots; returns their paths."""
    swept, metrics, rows, series = collect(workdir, state)
    columns = list(rows[0]) if rows else ['run', 'status']
    paths = [os.path.join(workdir, CSV_FILE), os.path.join(workdir, MD_FILE)]
    _write_csv(paths[0], columns, rows)
    cv_keys, fold_axis, cv_rows = cv.aggregate(state, swept, metrics, rows)
    folds = None
    if cv_rows:
        paths.append(os.path.join(workdir, cv.CSV_FILE))
        _write_csv(paths[-1], list(cv_rows[0]), cv_rows)
        folds = (cv_keys, fold_axis, cv_rows)
    plots = write_plots(workdir, swept, ['train/loss'] + metrics, rows, series, folds)
    with open(paths[1], 'w') as f:
        f.write(markdown(state, columns, rows, plots,
                         cv.markdown_table(cv_keys, metrics, cv_rows, _fmt) if cv_rows else ()))
    return paths + plots


def _write_csv(path: str, columns: list[str], rows: list[dict]):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v):
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4g}'
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v).replace('|', '\\|').replace('\n', ' ')


def markdown(state: dict, columns: list[str], rows: list[dict], plots: list[str],
             before=()) -> str:
    """results.md: the command, the status counts, the `before` lines (the cross-validation
    table), the per-run table, the plots."""
    counts = {}
    for r in rows:
        counts[r['status']] = counts.get(r['status'], 0) + 1
    lines = [f'# Sweep results: {state.get("sweep")}', '',
             f'Config `{state.get("config")}`' + (
                 f' with {" ".join("--config." + k + "=" + v for k, v in state["overrides"])}'
                 if state.get('overrides') else '') + '.', '',
             'Runs: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())) + '.', '',
             *before, '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in rows:
        lines.append('| ' + ' | '.join(_fmt(r[c])[:120] for c in columns) + ' |')
    lines.append('')
    lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in plots]
    return '\n'.join(lines) + '\n'


def write_plots(workdir, swept, finals, rows, series, folds=None) -> list[str]:
    """loss_curves.png and final_vs_<key>.png; `folds`: (configuration keys, kfold axis keys,
    configuration rows) of a k-fold sweep (cv.aggregate)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out = []
    with_data = [r for r in rows if series[r['run']]]
    if not with_data:
        return out
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(with_data):
        color = f'C{i % 10}'
        for key, style in (('train/loss', '-'), ('val/loss', '--')):
            pts = [(x['step'], x[key]) for x in series[r['run']] if key in x]
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker='o' if len(pts) < 20 else None,
                        label=r['run'] if style == '-' else None)
    ax.set_xlabel('step')
    ax.set_ylabel('loss (train solid, val dashed)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    fig.tight_layout()
    out.append(os.path.join(workdir, CURVES_FILE))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    done = [r for r in with_data if r['status'] == 'done']
    finals = [m for m in finals if 'chance' not in m and any(r[m] != '' for r in done)]
    finals = finals[:MAX_PANELS]
    for key in swept:
        if not done or not finals:
            break
        if folds is None:
            out.append(_plot_vs(plt, workdir, key, swept, finals, done))
            continue
        config_keys, fold_axis, cv_rows = folds
        if key not in fold_axis:  # a configuration key: mean ± std over folds
            complete = [r for r in cv_rows if r['status'] == 'done']
            if complete:
                out.append(_plot_vs(plt, workdir, key, config_keys, finals, complete, True))
        elif key.endswith('.index'):  # each fold's value, one line per configuration
            out.append(_plot_vs(plt, workdir, key, [*config_keys, key], finals, done))
    return out


def _plot_vs(plt, workdir, key, swept, finals, rows, with_std=False) -> str:
    """Each final metric against `key`; one line per setting of the other swept keys.
    `with_std`: rows of cv.aggregate, plotted as '<metric> mean' ± '<metric> std'."""
    def value(r, metric, part='mean'):
        return r[f'{metric} {part}'] if with_std else r[metric]

    xs = [r[key] for r in rows if r[key] != '']
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    labels = list(dict.fromkeys(json.dumps(x) for x in xs))
    others = [k for k in swept if k != key]
    cols = min(len(finals), 3)
    nrows = math.ceil(len(finals) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.5 * nrows), squeeze=False)
    groups = {}
    for r in rows:
        if r[key] != '':
            groups.setdefault(', '.join(f'{k}={_fmt(r[k])}' for k in others), []).append(r)
    for ax, metric in zip(axes.flat, finals):
        for label, group in groups.items():
            pts = [(r[key] if numeric else labels.index(json.dumps(r[key])), value(r, metric),
                    value(r, metric, 'std') if with_std else '')
                   for r in group if value(r, metric) != '']
            if pts:
                pts.sort(key=lambda p: p[:2])
                x, y, err = zip(*pts)
                if with_std and all(e != '' for e in err):
                    ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=label or None)
                else:
                    ax.plot(x, y, marker='o', label=label or None)
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale('log')
        if numeric and len(set(xs)) <= 8:
            ax.minorticks_off()
            ax.set_xticks(sorted(set(xs)), [f'{x:g}' for x in sorted(set(xs))])
        elif not numeric:
            ax.set_xticks(range(len(labels)), [s.strip('"') for s in labels])
        ax.set_xlabel(key)
        ax.set_title(f'final {metric}' + (' (mean ± std over folds)' if with_std else ''),
                     fontsize='medium')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(finals):]:
        ax.axis('off')
    if any(groups):
        axes.flat[0].legend(fontsize='x-small')
    fig.tight_layout()
    path = os.path.join(workdir, 'final_vs_' + re.sub(r'[^A-Za-z0-9._-]', '_', key) + '.png')
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
