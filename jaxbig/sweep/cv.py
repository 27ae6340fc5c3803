"""k-fold cross-validation in a sweep's report: the k runs of one configuration -> one row.

Runs of a `sweep.kfold` axis that differ only in the fold index (`data.folds.index`) are one
configuration. Its row (results_cv.csv, and the first table of results.md) has the
configuration's swept keys, `folds` (done / k), `status` (done when every fold is, else
incomplete) and, for each value of the per-run table (final train/loss, every eval metric
final and best, wall_s), `<value> mean` and `<value> std` over the configuration's done
folds: the sample standard deviation (ddof=1, the convention for cross-validation scores;
'' with fewer than two folds done). The per-fold runs stay in results.csv.
"""

from __future__ import annotations

import numpy as np

from jaxbig.sweep.plan import canonical, fold_keys, run_names

CSV_FILE = 'results_cv.csv'
DDOF = 1  # sample standard deviation over folds


def value_columns(metrics: list[str]) -> list[str]:
    """The per-run columns a configuration's row aggregates."""
    return ['train/loss', *[c for m in metrics for c in (m, f'best {m}')], 'wall_s']


def mean_std(values: list[float]) -> tuple[float | str, float | str]:
    """(mean, sample std with ddof=1) of the folds' values; '' where undefined."""
    if not values:
        return '', ''
    x = np.asarray(values, np.float64)
    return float(x.mean()), (float(x.std(ddof=DDOF)) if len(x) > DDOF else '')


def aggregate(state: dict, swept: list[str], metrics: list[str],
              rows: list[dict]) -> tuple[list[str], list[str], list[dict]]:
    """(the configurations' swept keys, the kfold axes' keys, one row per configuration),
    in the order their first runs appear; ([], [], []) when no run has a kfold axis.
    `rows`: the per-run table of report.collect (values '' where a run has none)."""
    groups, fold_axis = {}, set()
    for row in rows:
        overrides = state['runs'][row['run']].get('overrides', {})
        index_key, axis = fold_keys(overrides)
        if not index_key:
            continue  # a run outside any kfold axis (e.g. chained in): not a configuration
        fold_axis.update(axis)
        config = {k: v for k, v in overrides.items() if k != index_key}
        section = index_key.rpartition('.')[0]
        group = groups.setdefault(canonical(config), {
            'shown': {k: v for k, v in config.items() if k not in axis},
            'k': overrides[section + '.k'], 'rows': []})
        group['rows'].append(row)
    if not groups:
        return [], [], []
    keys = [k for k in swept if k not in fold_axis]
    names = run_names([g['shown'] for g in groups.values()])
    out = []
    for name, group in zip(names, groups.values()):
        done = [r for r in group['rows'] if r['status'] == 'done']
        row = {'config': name, **{k: group['shown'].get(k, '') for k in keys},
               'folds': f'{len(done)}/{group["k"]}',
               'status': 'done' if len(done) == group['k'] else 'incomplete'}
        for column in value_columns(metrics):
            values = [float(r[column]) for r in done if r.get(column, '') != '']
            row[f'{column} mean'], row[f'{column} std'] = mean_std(values)
        out.append(row)
    return keys, sorted(fold_axis, key=swept.index), out


def markdown_table(keys: list[str], metrics: list[str], rows: list[dict], fmt) -> list[str]:
    """The results.md lines of the per-configuration table: each value as 'mean ± std'."""
    values = [c for c in value_columns(metrics) if any(r[f'{c} mean'] != '' for r in rows)]
    columns = ['config', *keys, 'folds', 'status', *values]
    lines = ['## Cross-validation: mean ± sample std (ddof=1) over folds', '',
             '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in rows:
        cells = [fmt(r[c]) for c in ('config', *keys, 'folds', 'status')]
        for c in values:
            mean, std = r[f'{c} mean'], r[f'{c} std']
            cells.append('' if mean == '' else fmt(mean) + ('' if std == '' else f' ± {std:.2g}'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return [*lines, '', '## Runs (one per fold)', '']
