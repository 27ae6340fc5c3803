"""The embedded preference task: pairs built from the conditional task's examples
(jaxbig/data/builders/conditional_task.py; `data.task` = 'name' | 'body').

For each (prompt, response) example, chosen = its true response and rejected = a plausible
wrong one: the response of another function **of the same file** (its name for task='name',
its body for 'body') — the nearest following one, cyclically, whose response differs; a
file with a single distinct response borrows from the function half the split away. So the
model must tell the right name apart from names that fit the file's vocabulary, not from
noise. Validation pairs come from the held-out files, as for SFT. Deterministic: no seed.
"""

from __future__ import annotations

from jaxbig.data.builders import conditional_task


def make_pairs(examples) -> list[tuple[str, str, str, str]]:
    """[(where, prompt, chosen, rejected)] from conditional-task examples
    [(path, line, prompt, response)], in their order; where = 'path:line'."""
    n = len(examples)
    by_file, place = {}, []
    for i, example in enumerate(examples):
        group = by_file.setdefault(example[0], [])
        place.append(len(group))
        group.append(i)
    pairs = []
    for i, (path, line, prompt, response) in enumerate(examples):
        group, k = by_file[path], place[i]
        rejected = next((examples[j][3] for j in group[k + 1:] + group[:k]
                         if examples[j][3] != response), None)
        if rejected is None:
            rejected = next((examples[(i + n // 2 + d) % n][3] for d in range(n)
                             if examples[(i + n // 2 + d) % n][3] != response), None)
        if rejected is not None:
            pairs.append((f'{path}:{line}', prompt, response, rejected))
    return pairs


def load_pairs(data_dir: str, task: str, split: str) -> list[tuple[str, str, str, str]]:
    """The pairs of `split` ('train' | 'validation') of the embedded task."""
    return make_pairs(conditional_task.load_examples(data_dir, task)[split])
