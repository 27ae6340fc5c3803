"""Running lm-eval tasks on a JaxbigLM, offline, and reading the results back flat.

    evaluate(lm, tasks, num_fewshot=None, limit=None, include_path=()) -> Results

Tasks are looked up among lm-eval's own, the embedded ones (jaxbig.harness.tasks) and
`include_path` directories of YAML tasks. Nothing is downloaded: HF_DATASETS_OFFLINE and
HF_HUB_OFFLINE are set before lm-eval loads a dataset, so tasks on local files
(`dataset_path: json` / csv / parquet with `dataset_kwargs.data_files`) and datasets already
in the Hugging Face cache work, and a task whose data would have to be fetched is one line
naming it. Unknown task names are one line too.

`Results.metrics` is {'<task>/<metric>': value}: lm-eval's `metric,filter` keys with the
'none' filter dropped (other filters suffix the metric: `exact_match_strict-match`), their
standard errors as `<metric>_stderr` where lm-eval computed them, and
`<task>/num_examples` (the documents scored: lm-eval's effective sample count). Groups
(a tag such as `jaxbig_stdlib`) list their tasks' metrics, each task once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

from jaxbig.errors import ConfigError

LOCAL_BUILDERS = ('json', 'csv', 'parquet', 'text', 'arrow', 'pandas')


@dataclasses.dataclass
class Results:
    metrics: dict  # {'<task>/<metric>': float}
    raw: dict  # lm-eval's results dict ('results', 'configs', 'n-samples', ...), no samples


def task_manager(include_path=(), names=()):
    """lm-eval's TaskManager over the embedded tasks and `include_path`, and over lm-eval's
    own ~15,000 tasks (7 s to index) only when `names` needs them; cached per process."""
    from jaxbig.harness import tasks as embedded

    paths = [embedded.embedded_dir()]
    for path in include_path or ():
        if not os.path.isdir(path):
            raise ConfigError(f'--include-path {path!r}: not a directory of task YAML files')
        paths.append(os.path.abspath(path))
    local = _manager(tuple(paths), False)
    return local if all(n in local.all_tasks for n in names) else _manager(tuple(paths), True)


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=defaults)


def _hub_cached(path: str) -> bool:
    """Whether dataset `path` ('owner/name') is in the Hugging Face hub cache or in the
    datasets library's own cache of prepared datasets."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    return (os.path.isdir(os.path.join(constants.HF_HUB_CACHE,
                                       'datasets--' + path.replace('/', '--')))
            or os.path.isdir(os.path.join(str(datasets_config.HF_DATASETS_CACHE),
                                          path.replace('/', '___'))))


def check_tasks(names, include_path=()):
    """The TaskManager for `names`, after the one-line refusals: unknown names, and tasks
    whose dataset is neither local files, a local directory nor in the Hugging Face cache
    (lm-eval's parsed YAML; groups and Python-defined tasks are checked when loaded)."""
    manager = task_manager(include_path, names)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(f'--tasks: unknown task(s) {unknown} (lm-eval\'s, the embedded '
                          'jaxbig_stdlib tasks and --include-path YAML are searched)')
    remote = [f'{n} ({p})' for n, p in _dataset_paths(manager, names)
              if p not in LOCAL_BUILDERS and not os.path.isdir(os.path.expanduser(p))
              and not _hub_cached(p)]
    if remote:
        raise ConfigError(_offline_message(remote))
    return manager


def _dataset_paths(manager, names):
    for name in names:
        cfg = getattr(manager.task_index.get(name), 'cfg', None) or {}
        if cfg.get('dataset_path'):
            yield name, cfg['dataset_path']


def _offline_message(which) -> str:
    return (f'tasks {", ".join(which)}: the data is not on local disk or in the Hugging Face '
            'cache, and jaxbig harness never downloads (give local files: dataset_path: json '
            'with dataset_kwargs.data_files)')


def parse_tasks(tasks) -> list[str]:
    names = [t.strip() for t in (tasks.split(',') if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    if not names:
        raise ConfigError('give --tasks NAME[,NAME...] (e.g. jaxbig_stdlib: the embedded tasks)')
    return names


def evaluate(lm, tasks, *, num_fewshot: int | None = None, limit: float | None = None,
             include_path=(), seed: int = 0, apply_chat_template: bool = False) -> Results:
    """Runs `tasks` (names or a comma-separated string) on `lm`; see the module docstring.
    `apply_chat_template`: prompts rendered with the run's tokenizer's chat template (few-shot
    examples as turns), as lm-eval's `--apply_chat_template` does for instruct models."""
    from lm_eval import evaluator

    from jaxbig import harness

    harness.offline()
    names = parse_tasks(tasks)
    manager = check_tasks(names, include_path)
    for noisy in ('lm_eval', 'lm-eval', 'datasets', 'evaluate'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        raw = evaluator.simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=False, bootstrap_iters=0, apply_chat_template=apply_chat_template,
            random_seed=seed, numpy_random_seed=seed, fewshot_random_seed=seed,
            torch_random_seed=None)  # the model is JAX: no torch to seed (or import)
    except Exception as e:  # what datasets raises offline varies by version
        text = f'{type(e).__name__}: {e}'.lower()
        if 'offline' in text or 'connection' in text or 'resolve' in text:
            raise ConfigError(_offline_message(names)) from e
        raise
    return Results(metrics=flatten(raw), raw=raw)


def flatten(raw: dict) -> dict:
    """{'<task>/<metric>': float} from lm-eval's results dict (see the module docstring)."""
    out = {}
    for task, values in raw.get('results', {}).items():
        for key, value in values.items():
            if ',' not in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(',')
            stderr = metric.endswith('_stderr')
            metric = metric[:-len('_stderr')] if stderr else metric
            name = metric if filt == 'none' else f'{metric}_{filt}'
            out[f'{task}/{name}_stderr' if stderr else f'{task}/{name}'] = float(value)
        counts = raw.get('n-samples', {}).get(task)
        if counts:
            out[f'{task}/num_examples'] = float(counts.get('effective', counts.get('original')))
    return out
