"""Weighted mixtures of text sources: every training batch drawn from the sources in fixed
proportions, deterministically from (seed, step).

    data.mixture = [dict(name='files', path='web/', weight=0.7, label='web'),
                    dict(name='pystdlib', weight=0.3, label='code')]

Each entry overrides the data section for its source (name, path, text_key, splits,
data_dir, train_split, val_split); `weight` (> 0) is its share of every batch and `label`
(default: its name) names its validation metrics. The tokenizer, sequence length and
packing are the data section's own, shared by all sources.

Rows: the global batch of B rows gives source s n_s rows, B * w_s / sum(w) rounded by
largest remainder in units of the process count (so each process holds its share of every
source, and the proportions hold in every batch within one unit). Global batch i is, on
each process, the concatenation of source s's own batch i (`LMPipeline` of n_s rows, its
seed derived from (seed, s)): a pure function of (seed, i), so resume is exact; a small
source's epoch simply repeats, each epoch in a new order.

Validation: the loss evaluator scores each source's validation split on its own and logs
`<evaluator>/<label>/<metric>` (loss, bits per byte, counts) beside the overall metrics,
whose sums run over every source's examples (jaxbig/evals/loss.py). Training: the loop
counts each host batch's target tokens per source (`batch_stats`) and every log row has
`data/<label>/share` and `data/<label>/targets` since the previous row (`seen_row`).
"""

from __future__ import annotations

import numpy as np

SHARED = ('tokenizer', 'eos_id', 'seq_len', 'pack', 'pipeline', 'mixture')


def sources(config) -> list[tuple[str, float, object]]:
    """[(label, weight, the source's data section)] of `config.mixture` (a data section)."""
    entries = list(config.get('mixture') or [])
    out, labels = [], set()
    for k, entry in enumerate(entries):
        entry = dict(entry)
        weight = entry.pop('weight', None)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(f'data.mixture[{k}].weight={weight!r}: expected a number > 0')
        label = str(entry.pop('label', '') or entry.get('name', '') or f'source{k}')
        if label in labels:
            raise ValueError(f'data.mixture[{k}]: label {label!r} is used twice (set label=)')
        labels.add(label)
        unknown = sorted(set(entry) - set(config.keys()))
        if unknown:
            raise ValueError(f'data.mixture[{k}]: {unknown} are not data keys (expected weight, '
                             f'label and keys of the data section, e.g. name, path, text_key)')
        shared = sorted(set(entry) & set(SHARED))
        if shared:
            raise ValueError(f'data.mixture[{k}] sets {shared}: the sources share the data '
                             "section's tokenizer, sequence length and packing")
        section = config.copy_and_resolve_references()
        with section.unlocked():
            section.mixture = []
            for key, value in entry.items():
                section[key] = value
        out.append((label, float(weight), section))
    return out


def allocate(weights, batch_size: int, process_count: int = 1) -> np.ndarray:
    """Rows of each source in a global batch: largest-remainder rounding of
    batch_size * w / sum(w) in units of process_count rows (ties to the earlier source)."""
    if batch_size % process_count:
        raise ValueError(f'batch_size={batch_size} must be a multiple of process_count='
                         f'{process_count}')
    units = batch_size // process_count
    w = np.asarray(weights, np.float64)
    exact = units * w / w.sum()
    n = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(w)), -(exact - n)))  # largest remainder first
    n[order[:units - n.sum()]] += 1
    return n * process_count


class MixturePipeline:
    """get_batch(i) -> the sources' batches i concatenated (host-local rows); see the
    module docstring. `pipelines`: one per source, each built for its n_s rows."""

    def __init__(self, labels, rows, pipelines):
        self.labels, self.rows, self.pipelines = list(labels), np.asarray(rows), pipelines
        first = pipelines[0]
        self.tokenizer = getattr(first, 'tokenizer', None)
        self.batch_size = sum(p.batch_size for p in pipelines)
        self.global_batch_size = int(self.rows.sum())

    def get_batch(self, i: int) -> dict:
        parts = [p.get_batch(i) for p in self.pipelines]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def batch_stats(self, batch) -> dict[str, float]:
        """{label: target tokens of that source} in a host batch (rows [..., b, T]: one batch
        or a stack of them), counted from its mask: what the loop logs as the proportions
        actually seen (`seen_row`)."""
        mask = np.asarray(batch['mask'])
        ends = np.cumsum([p.batch_size for p in self.pipelines])
        starts = ends - [p.batch_size for p in self.pipelines]
        return {label: float(mask[..., a:b, :].sum())
                for label, a, b in zip(self.labels, starts, ends)}

    def seen_row(self, counts: dict) -> dict[str, float]:
        """The log row of summed `batch_stats`: data/<label>/targets and data/<label>/share
        (of all targets since the last log row, this process's rows)."""
        total = sum(counts.values()) or 1.0
        row = {}
        for label in self.labels:
            row[f'data/{label}/targets'] = counts.get(label, 0.0)
            row[f'data/{label}/share'] = counts.get(label, 0.0) / total
        return row
