"""Embedded lm-evaluation-harness tasks, built from the standard-library corpus's held-out
files (pystdlib's validation split: files no jaxbig LM trained on), one task per request type,
all tagged `jaxbig_stdlib`:

    stdlib_next_line        multiple_choice: the lines before a line of code (at most
                            CONTEXT_CHARS characters of whole lines, ending in '\\n'); which
                            of 4 lines comes next: the true one and 3 other lines of the
                            same file. acc, acc_norm (chance 0.25).
    stdlib_word_completion  generate_until: an identifier of 6+ characters cut inside (with
                            the lines before it); the rest of it, greedy until a character
                            that ends a word (WORD_ENDS; at most 16 tokens). exact_match.
    stdlib_files            loglikelihood_rolling: the first FILE_CHARS characters of each
                            held-out file. word_perplexity, byte_perplexity, bits_per_byte.

`embedded_dir()` writes the tasks' YAML (lm-eval's own format: `dataset_path: json` on the
JSONL beside it) and data once into `<TFDS data dir>/jaxbig_harness/<version>/` (keyed by the
Python version, whose library the examples come from, and FORMAT) and returns it: the
harness's `--include_path`. The examples are a fixed draw (seed 0): the same for every run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile

FORMAT = 4
TAG = 'jaxbig_stdlib'
CONTEXT_CHARS = 96
FILE_CHARS = 2048
NUM_EXAMPLES = {'stdlib_next_line': 400, 'stdlib_word_completion': 400, 'stdlib_files': 64}
CHOICES = 4
IDENTIFIER = re.compile(r'\b[A-Za-z_][A-Za-z0-9_]{5,}\b')
WORD_ENDS = ('\n', ' ', '(', ')', '[', ']', '{', '}', '.', ',', ':', '=', '"', "'")

TASKS = {
    'stdlib_next_line': dict(
        output_type='multiple_choice', doc_to_text='context', doc_to_choice='choices',
        doc_to_target='label', target_delimiter='',
        metric_list=[dict(metric='acc', aggregation='mean', higher_is_better=True),
                     dict(metric='acc_norm', aggregation='mean', higher_is_better=True)]),
    'stdlib_word_completion': dict(
        output_type='generate_until', doc_to_text='context', doc_to_target='target',
        target_delimiter='',
        generation_kwargs=dict(until=list(WORD_ENDS), max_gen_toks=16, do_sample=False),
        metric_list=[dict(metric='exact_match', aggregation='mean', higher_is_better=True)]),
    'stdlib_files': dict(
        output_type='loglikelihood_rolling', doc_to_text='', doc_to_target='text',
        metric_list=[dict(metric='word_perplexity', aggregation='weighted_perplexity',
                          higher_is_better=False),
                     dict(metric='byte_perplexity', aggregation='weighted_perplexity',
                          higher_is_better=False),
                     dict(metric='bits_per_byte', aggregation='bits_per_byte',
                          higher_is_better=False)]),
}


def held_out_files() -> list[tuple[str, str]]:
    """[(relative path, text)] of pystdlib's validation split, in path order."""
    from jaxbig.data.builders import pystdlib

    root = pystdlib.stdlib_root()
    out = []
    for rel in pystdlib.walk_files(root, suffix='.py',
                                   exclude_dirs=('site-packages', '__pycache__')):
        if pystdlib.split_for_path(rel) == 'validation':
            text = pystdlib.read_text(os.path.join(root, rel))
            if text and text.strip():
                out.append((rel, text))
    return out


def _code_lines(text: str) -> list[str]:
    return [line for line in text.split('\n') if line.strip()]


def next_line_examples(files, n: int, rng) -> list[dict]:
    """Up to n {'context', 'choices', 'label'} (see the module docstring)."""
    candidates = []
    for _, text in files:
        lines = _code_lines(text)
        if len(set(lines)) <= CHOICES:
            continue
        for i in range(1, len(lines)):
            candidates.append((lines, i))
    out = []
    for lines, i in rng.sample(candidates, min(len(candidates), 4 * n)):
        context = ''
        for line in reversed(lines[:i]):
            if len(context) + len(line) + 1 > CONTEXT_CHARS:
                break
            context = line + '\n' + context
        others = sorted(set(lines) - {lines[i]})
        if not context or len(others) < CHOICES - 1:
            continue
        choices = rng.sample(others, CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, lines[i])
        out.append({'context': context, 'choices': choices, 'label': label})
        if len(out) == n:
            break
    return out


def word_completion_examples(files, n: int, rng) -> list[dict]:
    """Up to n {'context', 'target'}: an identifier of at least 6 characters cut after 2 to
    len - 2 of them; the target is the rest of it."""
    candidates = []
    for _, text in files:
        lines = _code_lines(text)
        for i, line in enumerate(lines):
            for match in IDENTIFIER.finditer(line):
                candidates.append((lines, i, match.start(), match.end()))
    out = []
    for lines, i, start, end in rng.sample(candidates, min(len(candidates), n)):
        cut = rng.randrange(start + 2, end - 1)
        before = ''
        for line in reversed(lines[:i]):
            if len(before) + len(line) + 1 + cut > CONTEXT_CHARS:
                break
            before = line + '\n' + before
        out.append({'context': before + lines[i][:cut], 'target': lines[i][cut:end]})
    return out


def file_examples(files, n: int, rng) -> list[dict]:
    """Up to n {'path', 'text'}: a file's first FILE_CHARS characters."""
    return [{'path': path, 'text': text[:FILE_CHARS]}
            for path, text in sorted(rng.sample(files, min(len(files), n)))]


BUILD = {'stdlib_next_line': next_line_examples,
         'stdlib_word_completion': word_completion_examples,
         'stdlib_files': file_examples}


def task_yaml(name: str, data_file: str) -> dict:
    """lm-eval's task config of embedded task `name` reading `data_file` (JSONL)."""
    return dict(task=name, tag=[TAG], dataset_path='json',
                dataset_kwargs=dict(data_files=dict(test=data_file)), test_split='test',
                **TASKS[name], metadata=dict(version=float(FORMAT)))


def write_tasks(directory: str, final: str | None = None) -> None:
    """Builds every embedded task's JSONL and YAML into `directory`; the YAML names its data
    in `final` (default `directory`), where the directory will be moved."""
    import yaml

    files = held_out_files()
    for name, build in BUILD.items():
        examples = build(files, NUM_EXAMPLES[name], random.Random(0))
        with open(os.path.join(directory, f'{name}.jsonl'), 'w') as f:
            f.writelines(json.dumps(e) + '\n' for e in examples)
        config = task_yaml(name, os.path.join(final or directory, f'{name}.jsonl'))
        with open(os.path.join(directory, f'{name}.yaml'), 'w') as f:
            yaml.safe_dump(config, f, sort_keys=False, width=float('inf'))


def embedded_dir(data_dir: str = '') -> str:
    """The directory of the embedded tasks (built on first use; see the module docstring)."""
    from jaxbig.data.tfds_sources import resolve_data_dir

    version = f'py{sys.version_info[0]}{sys.version_info[1]}-v{FORMAT}'
    target = os.path.join(resolve_data_dir(data_dir), 'jaxbig_harness', version)
    if os.path.isfile(os.path.join(target, '.complete')):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix='.tmp-')
    try:
        write_tasks(tmp, target)
        open(os.path.join(tmp, '.complete'), 'w').close()
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use theirs
            if not os.path.isfile(os.path.join(target, '.complete')):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
