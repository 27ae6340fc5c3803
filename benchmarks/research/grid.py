"""Grid entries: one metric over (arm x setting) cells, each cell run over seeds, reported
as mean +- sample std (ddof=1) with every seed's value, as a table and a plot.

    result = grid_result(metric, x_name, cells, runs, x_log=False, higher_is_better=True)
    cell(arm, x, records, metric)  -> {arm, x, values (per seed), seeds, mean, std, cpu_s,
                                       wall_s, command (seed 0's), runs (names)}
    section(result)                -> markdown lines (report.markdown calls it for
                                      result['kind'] == 'grid')
    plot(result, path)             numeric x: a line per arm with +-1 std bars (log x when
                                   x_log); categorical x: grouped bars with +-1 std
A cell's value is its run's last logged `metric` (the final evaluation, not the best one:
choosing the best evaluation on the split that is reported would flatter small label sets).
"""

from __future__ import annotations

import statistics


def cell(arm: str, x, records: list[dict], metric: str, values=None) -> dict:
    """A cell from its seeds' run records (values: override, e.g. computed without a run)."""
    values = [r['final'].get(metric) for r in records] if values is None else list(values)
    got = [v for v in values if v is not None]
    return dict(arm=arm, x=x, values=values, seeds=[r.get('seed') for r in records],
                mean=statistics.fmean(got) if got else None,
                std=statistics.stdev(got) if len(got) > 1 else None,
                cpu_s=round(sum(r.get('cpu_s', 0) for r in records), 1),
                wall_s=round(sum(r.get('wall_s', 0) for r in records), 1),
                command=records[0]['command'] if records else '',
                runs=[r['name'] for r in records])


def grid_result(metric: str, x_name: str, cells: list[dict], runs: list[dict], *,
                x_log: bool = False, higher_is_better: bool = True, **extra) -> dict:
    return dict(kind='grid', metric=metric, x_name=x_name, x_log=x_log,
                higher_is_better=higher_is_better, cells=cells, runs=runs, **extra)


def _fmt(v, pct: bool) -> str:
    if v is None:
        return '-'
    return f'{100 * v:.1f}' if pct else f'{v:.3f}'


def section(result: dict) -> list[str]:
    pct = result['metric'].endswith('accuracy') or 'r1' in result['metric']
    unit = ' (%)' if pct else ''
    rows = [f'Metric: `{result["metric"]}`{unit}, the final evaluation of each run; mean '
            '+- sample std (ddof=1) over the seeds, every seed\'s value listed. CPU and wall '
            'are summed over the cell\'s runs; the command is seed 0\'s (the others differ '
            'in their seed arguments).', '',
            f'| arm | {result["x_name"]} | mean +- std | per seed | CPU | wall | command |',
            '|---|---|---|---|---|---|---|']
    for c in result['cells']:
        spread = '' if c['std'] is None else f' +- {_fmt(c["std"], pct)}'
        per_seed = ' / '.join(_fmt(v, pct) for v in c['values'])
        command = f'`{c["command"]}`' if c['command'] else '(no training: see the notes)'
        rows.append(f'| {c["arm"]} | {c["x"]} | {_fmt(c["mean"], pct)}{spread} | {per_seed} | '
                    f'{c["cpu_s"]:,.0f} s | {c["wall_s"] / 60:.1f} min | {command} |')
    return rows + ['']


def plot(result: dict, path: str) -> bool:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = [c for c in result['cells'] if c['mean'] is not None]
    if not cells:
        return False
    arms = list(dict.fromkeys(c['arm'] for c in cells))
    xs = list(dict.fromkeys(c['x'] for c in cells))
    numeric = all(isinstance(x, (int, float)) for x in xs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        mine = [c for c in cells if c['arm'] == arm]
        means = [c['mean'] for c in mine]
        stds = [c['std'] or 0.0 for c in mine]
        if numeric:
            ax.errorbar([c['x'] for c in mine], means, yerr=stds, marker='o', capsize=3,
                        label=arm)
        else:
            pos = [xs.index(c['x']) + (i - (len(arms) - 1) / 2) * width for c in mine]
            ax.bar(pos, means, width, yerr=stds, capsize=3, label=arm)
    if numeric and result.get('x_log'):
        ax.set_xscale('log')
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(result['x_name'])
    ax.set_ylabel(result['metric'])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(result.get('entry', ''))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
