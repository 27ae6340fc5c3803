"""The conditional-generation pipeline (`data.pipeline='conditional'`): batches of the
embedded task's (prompt, response) pairs (the task, its examples and their cache:
jaxbig/data/builders/conditional_task.py; `data.task` = 'name' | 'body'), or — with
`data.name='files'` — chat conversations: JSONL / Parquet records whose `data.messages_key`
('messages') is a list of {"role", "content"} messages at `data.path` (`data.splits` as
for text corpora), rendered with the tokenizer's chat template or the documented default
(jaxbig/data/text/chat.py); every assistant turn is a target, the last one the response
(the generation evaluator's reference).

Tokens: `data.tokenizer` (bytes by default). An example is prompt ids + response ids +
eos; its len - 1 positions are inputs = tokens[:-1], targets = tokens[1:], mask = 1 on
the targets that are response tokens (the eos included), 0 on the prompt's. Examples whose
tokens exceed `data.seq_len + 1` are left out (`num_skipped`).

Batches (`pipeline.get_batch(i)`, a pure function of (seed, i), like every pipeline): epoch
e visits the examples in a permutation seeded by (seed, e).

* `pack=True`: the epoch's examples, in that order, fill rows of `seq_len` greedily (an
  example that does not fit starts the next row); the batch also has `segment_ids` (k for
  the k-th example of its row, from 1; 0 = padding) and `positions` (0.. within each
  example), with which the GPT keeps attention within an example: a packed row computes
  what its examples would alone, and the loss mask is each example's own.
* `pack=False`: one example per row.
* `one_pass=True` (evaluators; `jaxbig.data.one_pass`): each of the first `num_examples`
  (0 = all) examples of epoch 0's order once, one example per row whatever `pack` (so a
  row is an example and `example_mask` float32[b] says which rows are real; with pack the
  row still has its segment_ids / positions, one segment).

    inputs, targets int32[b, T]; mask float32[b, T]; (pack) segment_ids, positions int32[b, T]

Padding is eos with mask 0. `generation_examples(n)` gives the generated-text evaluators
(jaxbig.evals.generation) n prompts (token ids) and their reference responses (text).
"""

from __future__ import annotations

import functools

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.builders import conditional_task
from jaxbig.data.text import documents


def prepare(config) -> None:
    """Prepares pystdlib if needed and builds (or checks) the task's cached examples (a
    'files' source of chat conversations needs nothing)."""
    if config.get('name', 'pystdlib') != 'files':
        conditional_task.prepare_examples(config)


# ------------------------------------------------------------------- Tokens and rows

def encode_pair(tokenizer, prompt: str, response: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, response ids + eos), int32. A tokenizer whose template adds a prefix
    (a BOS) adds it once, to the prompt; one that appends tokens after the text is refused."""
    added = tokenizer.encode('')
    p = np.asarray(tokenizer.encode(prompt), np.int32)
    r = np.asarray(tokenizer.encode(response), np.int32)
    if len(added):
        if not np.array_equal(p[:len(added)], added):
            raise ConfigError(f'data.tokenizer: {tokenizer!r} adds tokens after the text; the '
                              'conditional task needs one that adds none or only a prefix')
        if np.array_equal(r[:len(added)], added):
            r = r[len(added):]
    return p, np.append(r, tokenizer.eos_id).astype(np.int32)


def example_arrays(prompt_ids, response_ids, prompt_mask=None):
    """One example's (inputs, targets, mask) [n] with n = len(prompt) + len(response) - 1:
    mask 1 where the target is a response token, or a prompt token that prompt_mask
    [len(prompt)] marks (a chat's earlier assistant turns)."""
    tokens = np.concatenate([prompt_ids, response_ids]).astype(np.int32)
    if prompt_mask is None:
        prompt_mask = np.zeros(len(prompt_ids), np.float32)
    mask = np.concatenate([prompt_mask, np.ones(len(response_ids), np.float32)])[1:]
    return tokens[:-1], tokens[1:], mask.astype(np.float32)


def make_rows(examples, groups, seq_len: int, pad_id: int, packed: bool) -> dict:
    """A batch of len(groups) rows; row k holds examples[j] for j in groups[k] (each an
    (prompt ids, response ids) pair) one after another, padded with `pad_id` (mask 0).
    `packed` adds segment_ids (1.. per example, 0 = padding) and positions."""
    b = len(groups)
    batch = {'inputs': np.full((b, seq_len), pad_id, np.int32),
             'targets': np.full((b, seq_len), pad_id, np.int32),
             'mask': np.zeros((b, seq_len), np.float32)}
    if packed:
        batch['segment_ids'] = np.zeros((b, seq_len), np.int32)
        batch['positions'] = np.zeros((b, seq_len), np.int32)
    for row, group in enumerate(groups):
        start = 0
        for segment, j in enumerate(group, 1):
            inputs, targets, mask = example_arrays(*examples[j])
            end = start + len(inputs)
            if end > seq_len:
                raise ValueError(f'examples {list(group)} take {end} positions > seq_len={seq_len}')
            batch['inputs'][row, start:end], batch['targets'][row, start:end] = inputs, targets
            batch['mask'][row, start:end] = mask
            if packed:
                batch['segment_ids'][row, start:end] = segment
                batch['positions'][row, start:end] = np.arange(end - start)
            start = end
    return batch


def greedy_rows(lengths, seq_len: int) -> np.ndarray:
    """bounds int64[rows + 1]: examples (of positions `lengths`, in order) fill rows of
    `seq_len` one after another; row k holds examples bounds[k] .. bounds[k+1]-1."""
    bounds, used = [0], 0
    for k, n in enumerate(np.asarray(lengths).tolist()):
        if used + n > seq_len:
            bounds.append(k)
            used = 0
        used += n
    bounds.append(len(lengths))
    return np.asarray(bounds, np.int64)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class ConditionalPipeline:
    """Rows of (prompt, response) examples; see the module docstring.

    examples: [(prompt ids, response ids + eos)] (each at most seq_len + 1 tokens);
    references: the response texts. get_batch(i) -> host-local rows [p*b, (p+1)*b) of
    global batch i, b = batch_size // process_count.
    """

    def __init__(self, examples, references, *, tokenizer, seq_len, pack, batch_size,
                 seed, process_index=0, process_count=1, num_skipped=0, one_pass=False,
                 num_examples=0, split=''):
        if batch_size < 1 or batch_size % process_count:
            raise ConfigError(f'batch_size={batch_size} must be a positive multiple of '
                              f'process_count={process_count}')
        if not examples:
            raise ConfigError(f'data.seq_len={seq_len}: no example fits in seq_len + 1 tokens')
        self.examples, self.references = examples, references
        self.tokenizer, self.seq_len, self.pack, self.seed = tokenizer, seq_len, pack, seed
        self.num_skipped = num_skipped
        self.lengths = np.asarray([len(e[0]) + len(e[1]) - 1 for e in examples], np.int64)
        self.global_batch_size, self.batch_size = batch_size, batch_size // process_count
        self.row_offset = process_index * self.batch_size
        self._rows, self._epoch_ends = {}, []  # epoch -> (order, bounds); cumulative rows
        self.split = split
        self.one_pass = one_pass_lib.plan(
            one_pass, num_examples, len(examples), split=split, batch_size=batch_size,
            process_index=process_index, process_count=process_count)
        one_pass_lib.attach(self, self.one_pass)
        self._pass_order = None if self.one_pass is None else self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        """int64[n]: the order in which epoch `epoch` visits the examples."""
        return np.random.default_rng(_epoch_seed(self.seed, epoch)).permutation(
            len(self.examples))

    def _epoch(self, epoch: int):
        """(order int64[n], bounds int64[rows + 1]) of an epoch (bounds None: one per row)."""
        if epoch not in self._rows:
            if len(self._rows) >= 4:
                self._rows.clear()
            order = self._permutation(epoch)
            bounds = greedy_rows(self.lengths[order], self.seq_len) if self.pack else None
            self._rows[epoch] = order, bounds
        return self._rows[epoch]

    def _rows_in(self, epoch: int) -> int:
        bounds = self._epoch(epoch)[1]
        return len(self.examples) if bounds is None else len(bounds) - 1

    def row_groups(self, i: int) -> list[list[int]]:
        """Indices into `examples` of each host-local row of global batch i (a one pass: one
        example per row, the first num_examples of epoch 0's order, padding rows repeating
        the last)."""
        if self.one_pass is not None:
            return [[int(j)] for j in self._pass_order[self.one_pass.rows(i)[0]]]
        if i < 0:
            raise ValueError(f'batch index {i} must be >= 0')
        groups = []
        start = i * self.global_batch_size + self.row_offset
        for g in range(start, start + self.batch_size):
            while not self._epoch_ends or self._epoch_ends[-1] <= g:
                before = self._epoch_ends[-1] if self._epoch_ends else 0
                self._epoch_ends.append(before + self._rows_in(len(self._epoch_ends)))
            epoch = int(np.searchsorted(self._epoch_ends, g, side='right'))
            k = g - (self._epoch_ends[epoch - 1] if epoch else 0)
            order, bounds = self._epoch(epoch)
            groups.append(order[[k]].tolist() if bounds is None
                          else order[bounds[k]:bounds[k + 1]].tolist())
        return groups

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        batch = self.make_rows(self.row_groups(i))
        return one_pass_lib.with_mask(batch, None if self.one_pass is None
                                      else self.one_pass.rows(i)[1])

    def make_rows(self, groups) -> dict[str, np.ndarray]:
        """The batch of rows holding examples `groups` (see `row_groups`)."""
        return make_rows(self.examples, groups, self.seq_len, self.tokenizer.eos_id, self.pack)

    def generation_examples(self, n: int) -> list[tuple[np.ndarray, str]]:
        """n (0 = all) distinct (prompt ids, reference text) pairs spread evenly over the
        split, in its order (fixed); more than the split has: `one_pass.NumExamplesError`."""
        n = one_pass_lib.count(n, len(self.examples), split=self.split)
        picks = np.linspace(0, len(self.examples) - 1, n).round().astype(np.int64)
        return [(self.examples[j][0], self.references[j]) for j in picks.tolist()]


@functools.lru_cache(maxsize=8)
def _encoded(data_dir: str, task: str, split: str, tokenizer: str, eos_id: int, seq_len: int):
    from jaxbig.data.text import tokenizers

    tok = tokenizers.from_config({'tokenizer': tokenizer, 'eos_id': eos_id})
    if tok.eos_id is None:
        raise ConfigError(f'data.eos_id: {tok!r} has no end-of-sequence token to end responses')
    kept, references, skipped = [], [], 0
    for _, _, prompt, response in conditional_task.load_examples(data_dir, task)[split]:
        p, r = encode_pair(tok, prompt, response)
        if len(p) + len(r) > seq_len + 1:
            skipped += 1
            continue
        kept.append((p, r))
        references.append(response)
    return tok, kept, references, skipped


def encode_chat(tokenizer, chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids, response ids + eos, prompt mask) of a conversation cut into
    [(text, is assistant)] chunks (jaxbig.data.text.chat): the response is its last
    assistant turn, the prompt everything before it, with its earlier assistant turns marked
    as targets. Chunks are encoded one by one (a tokenizer's prefix, e.g. a BOS, kept on the
    first only), so no token spans a turn boundary."""
    last = max(k for k, (_, assistant) in enumerate(chunks) if assistant)
    added = tokenizer.encode('')
    ids, marks = [], []
    for k, (text, assistant) in enumerate(chunks[:last + 1]):
        part = np.asarray(tokenizer.encode(text), np.int32)
        if k and len(added) and np.array_equal(part[:len(added)], added):
            part = part[len(added):]
        ids.append(part)
        marks.append(np.full(len(part), float(assistant), np.float32))
    prompt = np.concatenate(ids[:-1]) if last else np.zeros(0, np.int32)
    mask = np.concatenate(marks[:-1]) if last else np.zeros(0, np.float32)
    return prompt.astype(np.int32), np.append(ids[-1], tokenizer.eos_id).astype(np.int32), mask


@functools.lru_cache(maxsize=8)
def _encoded_chat(fields: tuple, stamp: tuple, split: str, tokenizer: str, eos_id: int,
                  seq_len: int):
    """The 'files' source's conversations, as `_encoded` gives the embedded task's."""
    from jaxbig.data.text import chat, file_records, tokenizers

    config = dict(zip(CHAT_FIELDS, fields))
    tok = tokenizers.from_config({'tokenizer': tokenizer, 'eos_id': eos_id})
    if tok.eos_id is None:
        raise ConfigError(f'data.eos_id: {tok!r} has no end-of-sequence token to end responses')
    template = chat.for_data(tokenizer)
    kept, references, skipped = [], [], 0
    key = config['messages_key']
    for where, record in file_records.load_records(config, split, (key,)):
        if not isinstance(record, dict) or key not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(f'{where}: no data.messages_key={key!r} (found {found})')
        chunks = template.chunks(record[key], where)
        p, r, m = encode_chat(tok, chunks)
        if len(p) + len(r) > seq_len + 1 or not len(p):
            skipped += 1
            continue
        kept.append((p, r, m))
        references.append(next(text for text, a in reversed(chunks) if a))
    return tok, kept, references, skipped


CHAT_FIELDS = ('path', 'splits', 'messages_key')


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    """The conditional pipeline over `split` ('train' | 'validation') of `config` (a data
    ConfigDict: task, seq_len, pack, tokenizer, eos_id, data_dir); batch_size is global."""
    seq_len = config.seq_len
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise ConfigError(f'data.seq_len={seq_len!r} must be an int >= 2')
    if config.get('name', 'pystdlib') == 'files':  # chat conversations from JSONL / Parquet
        from jaxbig.data.text import file_records

        fields = (config.get('path', ''), config.get('splits', ''),
                  config.get('messages_key', 'messages'))
        tok, examples, references, skipped = _encoded_chat(
            fields, file_records.stamp(fields[0]), split, config.get('tokenizer', 'bytes'),
            config.get('eos_id', -1), seq_len)
        return ConditionalPipeline(
            examples, references, tokenizer=tok, seq_len=seq_len,
            pack=config.get('pack', True), batch_size=batch_size, seed=seed,
            process_index=process_index, process_count=process_count, num_skipped=skipped,
            one_pass=one_pass, num_examples=num_examples, split=split)
    task = conditional_task.check(config)
    if split not in conditional_task.SPLITS:
        raise ConfigError(f"data split {split!r}: the conditional task has 'train' and "
                          "'validation'")
    data_dir = documents.resolve_data_dir(config.get('data_dir', ''))
    tok, examples, references, skipped = _encoded(
        data_dir, task, split, config.get('tokenizer', 'bytes'), config.get('eos_id', -1),
        seq_len)
    return ConditionalPipeline(
        examples, references, tokenizer=tok, seq_len=seq_len,
        pack=config.get('pack', True), batch_size=batch_size, seed=seed,
        process_index=process_index, process_count=process_count, num_skipped=skipped,
        one_pass=one_pass, num_examples=num_examples, split=split)
