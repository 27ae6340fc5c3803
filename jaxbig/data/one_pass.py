"""One pass over a split, for evaluators: every example exactly once, in global batches.

Every pipeline module's `build_pipeline(config, *, split, batch_size, seed, process_index,
process_count, one_pass=False, num_examples=0)` takes the same two keys. By default a
pipeline is an endless stream (training); with `one_pass=True` it covers `num_examples`
examples of the split once (0 = all of it; more than the split has: `NumExamplesError`):
the first `num_examples` of a fixed order, the pipeline's epoch 0 for its seed (evaluators
build with seed 0, so the subset is the same in every run and at every batch size; with
`num_examples` a multiple of the batch size the batches are exactly the first batches of
the seed-0 stream). Such a pipeline has

    pipe.num_examples    int: the real examples it covers
    pipe.num_batches     ceil(num_examples / batch_size) global batches
    pipe.get_batch(i)    0 <= i < num_batches: the usual host-local batch plus
                         example_mask float32[b] (1 = a real example, 0 = padding)

Global batch i holds positions i*B .. i*B+B-1 of the pass, process p its rows [p*b, (p+1)*b)
(b = B // process_count), as in training. Positions >= num_examples (the tail of the last
batch) are padding: copies of the last real example, so a model never sees a degenerate
input; their token masks are left as they are and whoever sums over the batch weighs rows
by `example_mask` (the losses, `jaxbig.aggregate`; the evaluators).

`OnePass` is that row arithmetic, the only copy of it: each pipeline maps the positions it
returns to its own examples (`image_sources.ExampleRows` for the pipelines that read a
split's rows by id).
"""

from __future__ import annotations

import numpy as np

from jaxbig.errors import ConfigError


class NumExamplesError(ConfigError):
    """A `num_examples` a one-pass pipeline cannot give. The message starts with
    'num_examples=...', so an evaluator's builder can name its key (`evals.<name>.`)."""


def count(num_examples, available: int, *, split: str, what: str = 'examples') -> int:
    """The examples a one pass covers: `num_examples` (0 = all `available` of `split`)."""
    if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or (
            num_examples < 0):
        raise NumExamplesError(f'num_examples={num_examples!r}: must be an int >= 0 (0 = the '
                               'whole split)')
    if num_examples > available:
        raise NumExamplesError(f'num_examples={num_examples}: split {split!r} has only '
                               f'{available} {what}; ask for at most that (0 = all of them)')
    if available < 1:
        raise NumExamplesError(f'num_examples={num_examples}: split {split!r} has no {what}')
    return int(num_examples) or int(available)


class OnePass:
    """Rows of a one pass over `num_examples` examples in global batches of `batch_size`,
    as seen by process `process_index` of `process_count` (see the module docstring)."""

    def __init__(self, num_examples: int, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                             f'process_count={process_count}')
        if not 0 <= process_index < process_count:
            raise ValueError(f'process_index={process_index} not in [0, {process_count})')
        if num_examples < 1:
            raise ValueError(f'num_examples={num_examples}: a pass needs at least one example')
        self.num_examples = int(num_examples)
        self.global_batch_size = int(batch_size)
        self.batch_size = batch_size // process_count  # host-local rows
        self.row_offset = process_index * self.batch_size
        self.num_batches = -(-self.num_examples // self.global_batch_size)

    def global_rows(self, i: int) -> np.ndarray:
        """int64[b]: positions in the pass of this host's rows of global batch i (padding
        rows included: they run past num_examples)."""
        if not 0 <= i < self.num_batches:
            raise IndexError(f'batch {i}: a one pass over {self.num_examples} examples has '
                             f'batches 0..{self.num_batches - 1}')
        start = i * self.global_batch_size + self.row_offset
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64[b] in 0..num_examples-1, example_mask float32[b]) of this host's
        rows of global batch i; a padding row repeats the last position, with mask 0."""
        rows = self.global_rows(i)
        mask = (rows < self.num_examples).astype(np.float32)
        return np.minimum(rows, self.num_examples - 1), mask


def attach(pipeline, one_pass: OnePass | None) -> None:
    """Sets a one-pass pipeline's `num_examples` and `num_batches` (nothing when endless)."""
    if one_pass is not None:
        pipeline.num_examples, pipeline.num_batches = one_pass.num_examples, one_pass.num_batches


def with_mask(batch: dict, example_mask) -> dict:
    """`batch` with its `example_mask` (when the pipeline makes a one pass: mask not None)."""
    if example_mask is not None:
        batch['example_mask'] = np.asarray(example_mask, np.float32)
    return batch


def plan(one_pass: bool, num_examples, available: int, *, split: str, batch_size: int,
         process_index: int = 0, process_count: int = 1,
         what: str = 'examples') -> OnePass | None:
    """The `OnePass` of a pipeline built with `one_pass=True` over `available` examples of
    `split` (None for an endless one, which must not ask for `num_examples`)."""
    if not one_pass:
        if num_examples:
            raise ValueError(f'num_examples={num_examples} without one_pass=True: an endless '
                             'pipeline has no number of examples')
        return None
    n = count(num_examples, available, split=split, what=what)
    return OnePass(n, batch_size=batch_size, process_index=process_index,
                   process_count=process_count)
