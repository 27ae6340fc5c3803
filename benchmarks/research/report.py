"""RESULTS_RESEARCH.md and its PNG plots, written from stored entry results only.

    write(results, out, plot_dir, notes)   results: {entry: stored JSON dict} (harness);
                                           out: the markdown path; plots go to plot_dir as
                                           <entry>.png; notes: a markdown file appended
                                           when it exists
    markdown(results, plots)               -> the markdown text (plots: {entry: relative path})

Every figure row names the command that produced it, its wall time and CPU seconds.
"""

from __future__ import annotations

import math
import os

from research import grid

LN2 = math.log(2)
LM_ENTRIES = ('lm_recipe_short', 'lm_recipe', 'lm_sizes', 'moe_vs_dense')
BASELINE_NAMES = {
    'unigram': 'unigram (fitted on train, add-one)',
    'bigram': 'bigram (fitted on train, add-one)',
    'val_unigram_entropy': "validation's own unigram entropy (plug-in)",
    'zlib_9': 'zlib -9 (whole validation stream)',
    'xz_9e': 'xz -9e (lzma preset 9 + PRESET_EXTREME)',
}


def _pct(x) -> str:
    return '-' if x is None else f'{100 * x:.1f} %'


def _num(x, fmt='{:.3f}') -> str:
    return '-' if x is None else fmt.format(x)


def _minutes(seconds) -> str:
    return f'{seconds / 60:.1f} min'


def _run_cells(run: dict) -> str:
    resumed = (f' ({run["invocations"]} invocations)' if run.get('invocations', 1) > 1
               else '')
    return (f'{_minutes(run["wall_s"])}{resumed} | {run["cpu_s"]:,.0f} s | {run["seed"]} | '
            f'`{run["command"]}`')


def baselines_section(result: dict) -> list[str]:
    rows = [f'Validation split: {result["val_bytes"]:,} bytes (documents each followed by the '
            f'eos byte, as the evaluator scores them); train split {result["train_bytes"]:,} '
            f'bytes. {result["smoothing"]}. Computed in {result["wall_s"]:.0f} s.', '',
            '| baseline | bits / byte | nats / byte |', '|---|---|---|']
    for key, value in result['figures'].items():
        rows.append(f'| {BASELINE_NAMES.get(key, key)} | {value:.3f} | {value * LN2:.3f} |')
    return rows + ['']


def power_law_fit(tokens, bits) -> tuple[float, float, float]:
    """Least-squares fit of bits = a + b * tokens^-c (scipy.optimize.curve_fit, tokens in
    millions) -> (a, b, c). An extrapolation aid only: it knows nothing of the LR schedule."""
    import numpy as np
    from scipy.optimize import curve_fit

    x, y = np.asarray(tokens, float) / 1e6, np.asarray(bits, float)

    def law(t, a, b, c):
        return a + b * t ** -c

    (a, b, c), _ = curve_fit(law, x, y, p0=(y.min() * 0.8, y.max() - y.min(), 0.5),
                             bounds=([0, 0, 0], [y.max(), 100, 3]), maxfev=20000)
    return float(a), float(b), float(c)


def extrapolation(result: dict, full: int, warmup: int) -> list[str]:
    """The recipe's train curve after `warmup` steps, fitted and carried to `full` tokens."""
    run = result['runs'][0]
    points = [(_tokens(run, r['step']), r['train/loss'] / LN2) for r in run['curve']
              if 'train/loss' in r and r['step'] >= warmup]
    if not full or len(points) < 4:
        return []
    a, b, c = power_law_fit(*zip(*points, strict=True))
    at = a + b * (full / 1e6) ** -c
    return [f'Extrapolation (train bits/byte after step {warmup}, fitted to a + b D^-c, D in '
            f'millions of bytes: a = {a:.3f}, b = {b:.3f}, c = {c:.3f}): {at:.3f} bits/byte at its '
            f'schedule\'s end ({full / 1e6:.0f} M bytes). The fit sees only the constant-LR part '
            'of the schedule, none of the final cosine decay.', '']


def lm_section(result: dict, zlib_bpb) -> list[str]:
    rows = ['| run | tokens | val bits / byte | val nats / byte | vs zlib -9 | wall | CPU | '
            'seed | command |', '|---|---|---|---|---|---|---|---|---|']
    for run in result['runs']:
        bpb = run.get('val_bits_per_byte')
        versus = '-' if bpb is None or zlib_bpb is None else (
            f'{bpb - zlib_bpb:+.3f} ({"beats" if bpb < zlib_bpb else "behind"})')
        shape = f' ({run["shape"]}, {int(run["final"]["train/num_params"]):,} params)' if (
            'shape' in run and 'train/num_params' in run['final']) else ''
        rows.append(f'| {run["name"]}{shape} | {run["tokens"]:,} | {_num(bpb)} | '
                    f'{_num(None if bpb is None else bpb * LN2)} | {versus} | {_run_cells(run)} |')
    return rows + ['']


def clip_section(result: dict) -> list[str]:
    rows = ['| loss | zero-shot (24 classes) | i2t R@1 / 5 / 10 | t2i R@1 / 5 / 10 | exp(t) | '
            'wall | CPU | seed | command |', '|---|---|---|---|---|---|---|---|---|']
    for run in result['runs']:
        f = run['final']
        i2t, t2i = (' / '.join(_pct(f.get(f'retrieval/{d}_r{k}')) for k in (1, 5, 10))
                    for d in ('i2t', 't2i'))
        rows.append(f'| {run["name"]} | {_pct(f.get("zero_shot/accuracy"))} | {i2t} | {t2i} | '
                    f'{_num(f.get("train/logit_scale"), "{:.1f}")} | '
                    f'{_run_cells(run)} |')
    return rows + ['']


def diagnosis_section(result: dict) -> list[str]:
    rows = ['Accuracy (colour / shape alone) on the 1,000 test images; "ensemble" is the '
            'zero_shot evaluator\'s rule, "best template" scores a class by its best prompt.',
            '', '| run | ensemble | colour | shape | best template | colour | shape | '
            'cos within class | cos between classes |', '|---|---|---|---|---|---|---|---|---|']
    for name, f in result['figures'].items():
        cells = [_pct(f[f'{rule}_{k}']) for rule in ('ensemble', 'max_template')
                 for k in ('accuracy', 'colour', 'shape')]
        rows.append(f'| {name} | {" | ".join(cells)} | {f["within_class_cos"]:.2f} | '
                    f'{f["between_class_cos"]:.2f} |')
    return rows + ['']


def table_section(result: dict) -> list[str]:
    """result['figures'] = {row name: {column: value}} as a table, then the runs."""
    columns = list(next(iter(result['figures'].values())))
    rows = [f'| run | {" | ".join(columns)} |', '|---' * (len(columns) + 1) + '|']
    for name, f in result['figures'].items():
        rows.append(f'| {name} | {" | ".join(_num(f.get(c)) for c in columns)} |')
    rows += ['', '| run | wall | CPU | seed | command |', '|---|---|---|---|---|']
    rows += [f'| {run["name"]} | {_run_cells(run)} |' for run in result.get('runs', [])]
    return rows + ['']


def generic_section(result: dict) -> list[str]:
    rows = ['| run | wall | CPU | seed | command |', '|---|---|---|---|---|']
    rows += [f'| {run["name"]} | {_run_cells(run)} |' for run in result.get('runs', [])]
    return rows + ['', f'Figures: `{result.get("figures")}`', '']


def markdown(results: dict[str, dict], plots: dict[str, str], lm_full=None) -> str:
    """lm_full: (tokens, warmup steps) of the full LM recipe, for lm_recipe_short's
    extrapolation (None: no extrapolation)."""
    lines = ['# Research results on the embedded data', '',
             'Written by `python benchmarks/research.py --report` from '
             '`benchmarks/research/<entry>.json`; rerun one entry with '
             '`python benchmarks/research.py ENTRY --force`. Wall times are of the machine '
             'as it was (its 2 cores were shared with other jobs); CPU is the training '
             "process's user + system seconds.", '']
    zlib_bpb = results.get('lm_baselines', {}).get('figures', {}).get('zlib_9')
    for entry, result in results.items():
        quick = ' (--quick)' if result.get('quick') else ''
        lines += [f'## {entry}{quick}', '',
                  f'{result["date"]}, {result["machine"]}; entry wall time '
                  f'{_minutes(result["wall_s"])}.', '']
        if result.get('kind') == 'grid':
            lines += grid.section(result)
        elif result.get('kind') == 'table':
            lines += table_section(result)
        elif entry == 'lm_baselines':
            lines += baselines_section(result)
        elif entry in LM_ENTRIES:
            lines += lm_section(result, zlib_bpb)
            if entry == 'lm_recipe_short' and lm_full:
                lines += extrapolation(result, *lm_full)
        elif ('clip_' in entry or 'siglip_' in entry) and result.get('runs'):
            lines += clip_section(result)
        elif entry == 'clip_diagnosis':
            lines += diagnosis_section(result)
        else:
            lines += generic_section(result)
        if entry in plots:
            lines += [f'![{entry}]({plots[entry]})', '']
    return '\n'.join(lines)


def _tokens(run: dict, step: int) -> float:
    return step * run['batch'] * run['seq']


def curves_plot(result: dict, path: str) -> bool:
    """One panel per metric of result['plot'] (a list of keys): every run's curve of it
    against the step."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keys = result['plot']
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4))
    for ax, key in zip(axes, keys):
        for run in result['runs']:
            points = [(r['step'], r[key]) for r in run['curve'] if key in r]
            if points:
                ax.plot(*zip(*points), 'o-' if key.startswith(('val/', 'gen/')) else '-',
                        ms=3, label=run['name'])
        ax.set_xlabel('step')
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_entry(entry: str, result: dict, path: str, baseline_figures: dict) -> bool:
    """Writes `path` (PNG) for entries that have curves; -> whether it wrote one."""
    if result.get('kind') == 'grid':
        return grid.plot(result, path)
    if result.get('plot'):
        return curves_plot(result, path)
    runs = result.get('runs') or []
    if not runs:
        return False
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    sizes = entry == 'lm_sizes' and all('train/num_params' in r['final'] for r in runs)
    moe = entry == 'moe_vs_dense'
    fig, axes = plt.subplots(1, 2 if sizes or moe else 1, figsize=(12 if sizes or moe else 7, 4.5))
    ax = axes[0] if sizes or moe else axes
    if moe:  # the MoE run's load balance over training
        for run in runs:
            for key, style in (('train/moe_load_imbalance', '-'), ('train/moe_balance', '--')):
                points = [(r['step'], r[key]) for r in run['curve'] if key in r]
                if points:
                    axes[1].plot(*zip(*points), style, label=f'{run["name"]} {key[6:]}')
        axes[1].axhline(1.0, ls=':', lw=1, color='gray')
        axes[1].set_xlabel('step')
        axes[1].set_ylabel('busiest expert / mean (-), balance loss (--); 1 = even')
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        axes[1].set_title('load balance (mean over layers)')
    if sizes:  # final validation bits/byte against parameters, at equal tokens
        points = sorted((r['final']['train/num_params'], r['val_bits_per_byte'], r['name'])
                        for r in runs if r.get('val_bits_per_byte') is not None)
        axes[1].plot([p[0] for p in points], [p[1] for p in points], 'o-')
        for n, bpb, name in points:
            axes[1].annotate(name, (n, bpb), fontsize=8)
        axes[1].set_xscale('log')
        axes[1].set_xlabel('parameters (incl. embeddings)')
        axes[1].set_ylabel('final val bits / byte')
        axes[1].grid(alpha=0.3)
        axes[1].set_title('at equal tokens')
    if entry in LM_ENTRIES:
        for run in runs:
            val = [(_tokens(run, r['step']), r['val/bits_per_byte']) for r in run['curve']
                   if 'val/bits_per_byte' in r]
            train = [(_tokens(run, r['step']), r['train/loss'] / LN2) for r in run['curve']
                     if 'train/loss' in r]
            if train:
                line, = ax.plot(*zip(*train), alpha=0.4, label=f'{run["name"]} train')
                if val:
                    ax.plot(*zip(*val), 'o-', color=line.get_color(), label=f'{run["name"]} val')
        for key in ('zlib_9', 'xz_9e', 'bigram'):
            if key in baseline_figures:
                ax.axhline(baseline_figures[key], ls='--', lw=1, color='gray')
                ax.annotate(BASELINE_NAMES[key].split(' (')[0], (0, baseline_figures[key]),
                            xycoords=('axes fraction', 'data'), va='bottom', fontsize=8)
        ax.set_xscale('log')
        ax.set_xlabel('training bytes seen')
        ax.set_ylabel('bits / byte')
    elif 'clip_' in entry or 'siglip_' in entry:
        for run in runs:
            points = [(r['step'], r['zero_shot/accuracy']) for r in run['curve']
                      if 'zero_shot/accuracy' in r]
            acc = [(r['step'], r['train/i2t_accuracy']) for r in run['curve']
                   if 'train/i2t_accuracy' in r]
            if acc:
                line, = ax.plot(*zip(*acc), alpha=0.5, label=f'{run["name"]} in-batch i2t')
                if points:
                    ax.plot(*zip(*points), 'o-', color=line.get_color(),
                            label=f'{run["name"]} zero-shot')
        ax.axhline(0.8, ls='--', lw=1, color='gray', label='zero-shot target 80 %')
        ax.set_xlabel('step')
        ax.set_ylabel('accuracy')
    else:
        plt.close(fig)
        return False
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(entry)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(results: dict[str, dict], out: str, plot_dir: str, notes: str = '',
          lm_full=None) -> str:
    """Writes the markdown to `out` and the plots to `plot_dir`; -> the markdown."""
    os.makedirs(plot_dir, exist_ok=True)
    baseline_figures = results.get('lm_baselines', {}).get('figures', {})
    plots = {}
    for entry, result in results.items():
        path = os.path.join(plot_dir, f'{entry}.png')
        if plot_entry(entry, result, path, baseline_figures):
            plots[entry] = os.path.relpath(path, os.path.dirname(os.path.abspath(out)))
    text = markdown(results, plots, lm_full)
    if notes and os.path.exists(notes):
        with open(notes) as f:
            text += '\n' + f.read()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.write(text.rstrip() + '\n')
    return text
