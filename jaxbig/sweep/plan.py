"""Sweep specs -> runs: the helpers sweep files build their runs with, and planning.

A sweep file's `get_sweep()` returns a list of override dicts, built with `axis`, `product`,
`zip_`, `chain`, `fixed` and `kfold` (k-fold cross-validation: one run per held-out fold).
`load_sweep` runs it and checks the result; `run_names` gives each run a readable,
filesystem-safe, unique name; `run_spec` merges a run's ':key' entries
(config-file arguments) into the --config spec; `plan_runs` turns the whole sweep into
`jaxbig train` argument lists, checking each run's config (a bad override becomes the run's
'error' instead of failing the sweep).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import re

from jaxbig import config as config_lib

ARG_PREFIX = ':'  # keys like ':mode' are config-file arguments, not config keys
MAX_NAME = 100


# ---------------------------------------------------------------------- Sweep helpers

def axis(key: str, values) -> list[dict]:
    """One swept key: `axis('optimizer.lr', [1e-3, 3e-3])` -> [{'optimizer.lr': 1e-3}, ...]."""
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes (each a list of dicts); the last one varies fastest."""
    return [_merge(*combo) for combo in itertools.product(*axes)]


def zip_(*axes: list[dict]) -> list[dict]:
    """Axes of equal length stepped together: zip_(axis('a', [1, 2]), axis('b', [3, 4]))."""
    if len({len(a) for a in axes}) > 1:
        raise config_lib.ConfigError(f'sweep.zip_: axes of different lengths {[len(a) for a in axes]}')
    return [_merge(*combo) for combo in zip(*axes)]


def chain(*sweeps: list[dict]) -> list[dict]:
    """Concatenation: the runs of each sweep, one after the other."""
    return [dict(run) for s in sweeps for run in s]


def fixed(**overrides) -> list[dict]:
    """A single run's worth of overrides, for product(): fixed(**{'train.steps': 100})."""
    return [dict(overrides)]


def kfold(k: int, seed: int = 0, *, evals=('val',), section: str = 'data.folds') -> list[dict]:
    """k-fold cross-validation as an axis of k runs: run i trains on the training split less
    fold i and evaluates `evals` (evaluator names) on fold i (`jaxbig.data.folds`):

        {'data.folds.k': k, 'data.folds.index': i, 'data.folds.seed': seed,
         'evals.val.split': 'fold'}

    Compose it like any axis: `product(axis('optimizer.lr', [1e-3, 1e-2]), kfold(5))`. Its
    runs are named `...,fold=<i>of<k>`; the report adds one row per configuration (runs
    that differ only in the fold index) with each metric's mean and sample std over folds.
    `section`: where the config keeps its folds ('data.source.folds' for the `features`
    pipeline, whose source data is folded)."""
    from jaxbig.data.folds import FOLD_SPLIT

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise config_lib.ConfigError(f'sweep.kfold(k={k!r}): expected k >= 2 folds')
    if isinstance(evals, str):
        evals = (evals,)
    split = {f'evals.{name}.split': FOLD_SPLIT for name in evals}
    return [{f'{section}.k': k, f'{section}.index': i, f'{section}.seed': int(seed), **split}
            for i in range(k)]


def fold_keys(run: dict) -> tuple[str, dict]:
    """(the key of a kfold axis' fold index or '', {every key of that axis: value}) in a
    run's overrides: `<section>.index` with `<section>.k` beside it, that section's seed /
    stratify and the `evals.<name>.split` keys set to 'fold'."""
    from jaxbig.data.folds import FOLD_SPLIT

    for key in run:
        section, _, leaf = key.rpartition('.')
        if leaf == 'index' and section.endswith('folds') and f'{section}.k' in run:
            axis_keys = {f'{section}.{x}' for x in ('k', 'index', 'seed', 'stratify')}
            axis_keys |= {k for k, v in run.items()
                          if re.fullmatch(r'evals\.[^.]+\.split', k) and v == FOLD_SPLIT}
            return key, {k: v for k, v in run.items() if k in axis_keys}
    return '', {}


def _name_items(run: dict) -> dict:
    """The (key, value) pairs a run's name shows: a kfold axis as one `fold=<i>of<k>` (and
    its seed when not 0) in place of its keys."""
    index_key, axis_keys = fold_keys(run)
    if not index_key:
        return run
    section = index_key.rpartition('.')[0]
    out, placed = {}, False
    for key, value in run.items():
        if key not in axis_keys:
            out[key] = value
        elif not placed:
            out['fold'] = f'{run[index_key]}of{run[section + ".k"]}'
            placed = True
    if run.get(section + '.seed', 0) != 0:
        out['fold_seed'] = run[section + '.seed']
    return out


def _merge(*dicts: dict) -> dict:
    out = {}
    for d in dicts:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise config_lib.ConfigError(f'sweep: {k!r} is set twice ({out[k]!r}, {v!r})')
            out[k] = v
    return out


# ---------------------------------------------------------------------- Planning

def load_sweep(path: str) -> list[dict]:
    """Runs `path`'s get_sweep() and checks it returns a list of {str: value} dicts."""
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f'--sweep {path!r}: no such file')
    spec = importlib.util.spec_from_file_location('_jaxbig_sweep', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_sweep'):
        raise config_lib.ConfigError(f'--sweep {path}: the file defines no get_sweep()')
    runs = module.get_sweep()
    if not isinstance(runs, (list, tuple)) or not runs:
        raise config_lib.ConfigError(f'--sweep {path}: get_sweep() must return a non-empty list')
    seen = {}
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not all(isinstance(k, str) and k for k in run):
            raise config_lib.ConfigError(f'--sweep {path}: run {i} is not a dict of str keys')
        key = canonical(run)
        if key in seen:
            raise config_lib.ConfigError(f'--sweep {path}: run {i} repeats run {seen[key]}')
        seen[key] = i
    return [json.loads(canonical(r, sort=False)) for r in runs]


def canonical(run: dict, sort: bool = True) -> str:
    """A run's overrides as JSON: its identity in sweep.json across launches."""
    return json.dumps(run, sort_keys=sort, default=repr)


def arg_value(value) -> str:
    """A Python value as the string `--config.k=` (or a config-file argument) expects."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return value
    return repr(value)


def run_names(runs: list[dict]) -> list[str]:
    """Readable, filesystem-safe, unique names: 'lr=0.001,embed_dim=64'. A key is shortened
    to its last dotted parts that are unique among the sweep's keys; a kfold axis shows as
    'fold=2of5'."""
    shown = [_name_items(run) for run in runs]
    keys = list(dict.fromkeys(k for run in shown for k in run))
    short = {}
    for key in keys:
        parts = key.lstrip(ARG_PREFIX).split('.')
        for n in range(1, len(parts) + 1):
            cand = '.'.join(parts[-n:])
            if all(o == key or not ('.' + o.lstrip(ARG_PREFIX)).endswith('.' + cand) for o in keys):
                break
        short[key] = cand
    names, used = [], set()
    for run, items in zip(runs, shown):
        name = ','.join(f'{short[k]}={arg_value(v)}' for k, v in items.items()) or 'base'
        name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 9] + '~' + hashlib.sha1(canonical(run).encode()).hexdigest()[:8]
        base, i = name, 1
        while name in used:
            i += 1
            name = f'{base}~{i}'
        used.add(name)
        names.append(name)
    return names


def run_spec(spec: str, run: dict) -> str:
    """The --config spec of a run: its ':key' entries merged into the config-file argument."""
    args = {k[len(ARG_PREFIX):]: arg_value(v) for k, v in run.items() if k.startswith(ARG_PREFIX)}
    if not args:
        return spec
    path, _, arg = spec.partition(':')
    items = {}
    for item in filter(None, arg.split(',')):
        key, sep, value = item.partition('=')
        items[key.strip()] = value if sep else 'true'
    for key, value in args.items():
        if ',' in value:
            raise config_lib.ConfigError(f'sweep: config argument {key}={value!r} contains a comma')
        items[key] = value
    return path + ':' + ','.join(f'{k}={v}' for k, v in items.items())


def plan_runs(spec: str, sweep_path: str, base: list[tuple[str, str]],
              names: dict | None = None) -> list[dict]:
    """The sweep's runs: [{'name', 'overrides', 'spec', 'args', 'error'}], each checked by
    loading its config (a bad override fills 'error' instead of raising). `names` maps a
    run's canonical overrides to the name a previous launch gave it."""
    config_lib.apply_overrides(config_lib.load(spec), base)  # a bad base fails the sweep
    runs = load_sweep(sweep_path)
    fresh = run_names(runs)
    out = []
    for run, name in zip(runs, fresh):
        name = (names or {}).get(canonical(run), name)
        overrides = [(k, arg_value(v)) for k, v in run.items() if not k.startswith(ARG_PREFIX)]
        error = ''
        try:
            r_spec = run_spec(spec, run)
            config_lib.apply_overrides(config_lib.load(r_spec), base + overrides)
        except config_lib.ConfigError as e:
            r_spec, error = spec, str(e)
        args = ['--config', r_spec] + [f'--config.{k}={v}' for k, v in base + overrides]
        out.append({'name': name, 'overrides': run, 'spec': r_spec, 'args': args,
                    'error': error})
    return out
