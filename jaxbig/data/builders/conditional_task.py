"""Embedded conditional-generation task: (prompt, response) pairs built from the standard
library's functions, on the `pystdlib` TFDS dataset (the pipeline that batches them:
`data.pipeline='conditional'`, jaxbig/data/pipelines/conditional.py).

Tasks (`data.task`), one example per function or method (`def` / `async def`, at any depth)
of a file that parses, in file order then line order:

    name   prompt: the function's source, decorators left out, with every whole-word
                   occurrence of its name (the `def` line, recursive calls, docstring
                   mentions) replaced by `<name>`, then the cue "\\n# name:"
           response: " " + the name.     Dunder methods (__init__, ...) are left out.
    body   prompt: the `def` line(s) and the docstring (functions that have one)
           response: the rest of the function: its body after the docstring.

Sources are dedented by the `def` line's indentation. Train examples come from the train
split's files, validation examples from the validation split's (pystdlib's stable hash of
the file path: held-out files); a validation example whose (prompt, response) also occurs
in training (a function copied between files) is dropped. The examples are built once with
Python's `ast` (~15 s for the whole library) by `prepare` and cached next to the prepared
data as `jaxbig-conditional.<task>.json` (keyed by the dataset and the Python version).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
import sys
import warnings

import tensorflow_datasets as tfds

from jaxbig.config import ConfigError
from jaxbig.data.text import documents

TASKS = ('name', 'body')
PLACEHOLDER = '<name>'
NAME_CUE = '\n# name:'
CACHE_FORMAT = 1
SPLITS = ('train', 'validation')


# ------------------------------------------------------------------- Examples from source

def _dedented(lines: list[str], first: int, last: int, indent: int) -> str:
    """Lines [first, last) (0-based) with `indent` leading characters removed where they
    are all whitespace (lines of a string literal that start further left stay as they are)."""
    out = [line[indent:] if not line[:indent].strip() else line for line in lines[first:last]]
    return ''.join(out)


def _functions(text: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of a source file, in line order; [] if it does not parse."""
    try:
        with warnings.catch_warnings():  # invalid escapes etc. in the library's own files
            warnings.simplefilter('ignore')
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    nodes, todo = [], [tree]
    while todo:  # statements only: a def is a statement, so no expression is walked
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append(node)
        for field in _STATEMENT_LISTS:
            todo.extend(getattr(node, field, ()))
    return sorted(nodes, key=lambda n: (n.lineno, n.col_offset))


# The fields that hold statements (or except / case clauses, which hold statements).
_STATEMENT_LISTS = ('body', 'orelse', 'finalbody', 'handlers', 'cases')


def name_example(lines: list[str], node) -> tuple[str, str] | None:
    """(source with the name replaced by PLACEHOLDER + NAME_CUE, ' ' + name), or None for
    a dunder method."""
    name = node.name
    if name.startswith('__') and name.endswith('__'):
        return None
    source = _dedented(lines, node.lineno - 1, node.end_lineno, node.col_offset).rstrip()
    source = re.sub(rf'\b{re.escape(name)}\b', PLACEHOLDER, source)
    return source + NAME_CUE, ' ' + name


def body_example(lines: list[str], node) -> tuple[str, str] | None:
    """(the def line(s) and docstring, the rest of the body), or None without a docstring
    or without a statement after it."""
    body = node.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return None
    doc_end = body[0].end_lineno  # 1-based: the docstring's last line
    if doc_end >= node.end_lineno:
        return None
    prompt = _dedented(lines, node.lineno - 1, doc_end, node.col_offset)
    response = _dedented(lines, doc_end, node.end_lineno, node.col_offset).rstrip() + '\n'
    return (prompt, response) if response.strip() else None


EXTRACT = {'name': name_example, 'body': body_example}


def file_examples(task: str, text: str) -> list[tuple[int, str, str]]:
    """[(line, prompt, response)] of one source file for `task`."""
    lines = text.splitlines(keepends=True)
    out = []
    for node in _functions(text):
        example = EXTRACT[task](lines, node)
        if example is not None:
            out.append((node.lineno, *example))
    return out


def build_examples(task: str, files) -> list[tuple[str, int, str, str]]:
    """[(path, line, prompt, response)] for `files`, an iterable of (path, text)."""
    return [(path, line, p, r) for path, text in files for line, p, r in file_examples(task, text)]


# ------------------------------------------------------------------- The cached examples

def check(config) -> str:
    """The task name of a data config (pystdlib only; `data.task` in TASKS)."""
    if config.get('name', 'pystdlib') != 'pystdlib':
        raise ConfigError(f"data.name={config.name!r}: the conditional task is built from "
                          "'pystdlib' only")
    task = config.get('task', 'name')
    if task not in TASKS:
        raise ConfigError(f'data.task={task!r}: expected one of {TASKS}')
    return task


def _builder(data_dir: str, prepare: bool = False):
    builder = documents.EMBEDDED['pystdlib'](data_dir=data_dir)
    if not builder.is_prepared():
        if not prepare:
            raise ValueError(f"data.name='pystdlib': not prepared in {data_dir!r}; call "
                             'jaxbig.data.prepare(config) first')
        builder.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def _split_files(builder, split: str):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
        item = source[i]
        path, text = item['path'], item['text']
        yield (path.decode() if isinstance(path, bytes) else str(path),
               text.decode('utf-8') if isinstance(text, bytes) else str(text))


def _fingerprint(builder, task: str) -> dict:
    return {'format': CACHE_FORMAT, 'task': task, 'dataset': builder.info.full_name,
            'records': {s: int(builder.info.splits[s].num_examples) for s in SPLITS},
            'python': list(sys.version_info[:2])}  # what `ast` parses differs by version


def _compute(builder, task: str) -> dict:
    train = build_examples(task, _split_files(builder, 'train'))
    seen = {(p, r) for _, _, p, r in train}
    validation = build_examples(task, _split_files(builder, 'validation'))
    held_out = [e for e in validation if (e[2], e[3]) not in seen]
    return {'train': train, 'validation': held_out,
            'duplicates_dropped': len(validation) - len(held_out)}


@functools.lru_cache(maxsize=4)
def load_examples(data_dir: str, task: str) -> dict:
    """{'train', 'validation': [(path, line, prompt, response)], 'duplicates_dropped': n}:
    the cached examples if they match the dataset, else built (and cached)."""
    builder = _builder(data_dir)
    path = os.path.join(os.fspath(builder.data_dir), f'jaxbig-conditional.{task}.json')
    key = _fingerprint(builder, task)
    if os.path.exists(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get('fingerprint') == key:
                return {k: [tuple(e) for e in v] if isinstance(v, list) else v
                        for k, v in cached['examples'].items()}
            logging.info('data: rebuilding %s (built for %s)', path, cached.get('fingerprint'))
        except (OSError, ValueError, KeyError) as e:
            logging.warning('data: rebuilding %s: %s', path, e)
    examples = _compute(builder, task)
    text = json.dumps({'fingerprint': key, 'examples': examples})
    try:
        documents._atomic_write(path, lambda f: f.write(text.encode()))
    except OSError as e:
        logging.warning('data: cannot cache %s (%s); each process builds the examples', path, e)
    return examples


def prepare_examples(config) -> None:
    """Prepares pystdlib if needed and builds (or checks) the task's cached examples."""
    task = check(config)
    data_dir = documents.resolve_data_dir(config.get('data_dir', ''))
    _builder(data_dir, prepare=True)
    load_examples(data_dir, task)
