"""The preference pipeline (`data.pipeline='preference'`): batches of (prompt, chosen,
rejected) pairs for jaxbig.losses.preference (DPO, IPO, SimPO, ORPO).

Sources (`data.name`):
  'pystdlib'  the embedded preference task (jaxbig/data/builders/preference_task.py;
              `data.task` = 'name' | 'body'): the true response vs another function's from the
              same file; validation pairs from held-out files
  'files'     JSONL / Parquet records {prompt, chosen, rejected} at `data.path`
              (jaxbig/data/text/preference_files.py; `data.splits` as for text corpora)

Tokens: `data.tokenizer`; each side is prompt ids + response ids + eos, encoded as the SFT
pipeline does (jaxbig.data.pipelines.conditional.encode_pair), with the loss mask on the
response tokens (eos included) only. One pair per row, padded with eos (mask 0):

    chosen_inputs, chosen_targets int32[b, T]; chosen_mask float32[b, T]; the same for
    rejected_ (T = data.seq_len)

A pair whose longer side exceeds seq_len + 1 tokens is left out (`num_skipped`); from files,
a prompt that leaves no room for a response within seq_len is refused in one line instead (it
says which record). Order, epochs, resume and the evaluators' one pass (`example_mask`) are
the SFT pipeline's (a pure function of (seed, batch index)); `generation_examples` gives the
generation evaluator each pair's prompt and its chosen response as the reference.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data.builders import conditional_task, preference_task
from jaxbig.data.pipelines import conditional
from jaxbig.data.text import documents, file_records, preference_files

SOURCES = ('pystdlib', 'files')
FILE_FIELDS = {'path': '', 'splits': '', 'prompt_key': 'prompt', 'chosen_key': 'chosen',
               'rejected_key': 'rejected'}  # data.* keys of a 'files' source, defaults


def prepare(config) -> None:
    """The embedded source builds (or checks) the conditional task's cached examples."""
    if _source(config) == 'pystdlib':
        conditional_task.prepare_examples(config)


def _source(config) -> str:
    name = config.get('name', 'pystdlib')
    if name not in SOURCES:
        raise ConfigError(f"data.name={name!r}: the preference pipeline reads {SOURCES}")
    return name


class PreferencePipeline(conditional.ConditionalPipeline):
    """Rows of pairs; `examples` are (prompt, chosen) like the SFT pipeline's, `rejected`
    the rejected response ids (+ eos) of each, `references` the chosen texts."""

    def __init__(self, examples, rejected, references, **kwargs):
        super().__init__(examples, references, pack=False, **kwargs)
        self.rejected = [(p, r) for (p, _), r in zip(examples, rejected)]

    def make_rows(self, groups) -> dict[str, np.ndarray]:
        pad = self.tokenizer.eos_id
        chosen = conditional.make_rows(self.examples, groups, self.seq_len, pad, False)
        rejected = conditional.make_rows(self.rejected, groups, self.seq_len, pad, False)
        return {**{f'chosen_{k}': v for k, v in chosen.items()},
                **{f'rejected_{k}': v for k, v in rejected.items()}}


@functools.lru_cache(maxsize=8)
def _encoded(source: str, key: tuple, split: str, tokenizer: str, eos_id: int, seq_len: int):
    """(tokenizer, [(prompt, chosen ids)], [rejected ids], [chosen texts], skipped); `key`:
    (data_dir, task) of the embedded task, or the files' fields and (path, size, mtime)s."""
    from jaxbig.data.text import tokenizers

    if source == 'pystdlib':
        pairs = preference_task.load_pairs(*key, split)
    else:
        pairs = preference_files.load_pairs(
            {**dict(zip(FILE_FIELDS, key[0])), 'tokenizer': tokenizer}, split)

    tok = tokenizers.from_config({'tokenizer': tokenizer, 'eos_id': eos_id})
    if tok.eos_id is None:
        raise ConfigError(f'data.eos_id: {tok!r} has no end-of-sequence token to end responses')
    examples, rejected, references, skipped = [], [], [], 0
    for where, prompt, chosen, other in pairs:
        p, c = conditional.encode_pair(tok, prompt, chosen)
        _, r = conditional.encode_pair(tok, prompt, other)
        if source == 'files' and len(p) >= seq_len:
            raise ConfigError(f'{where}: the prompt takes {len(p)} tokens, leaving no room for '
                              f'a response within data.seq_len={seq_len}; raise data.seq_len')
        if len(p) + max(len(c), len(r)) > seq_len + 1:
            skipped += 1
            continue
        examples.append((p, c))
        rejected.append(r)
        references.append(chosen)
    if skipped:
        logging.info('data: %d %s pairs longer than seq_len=%d left out', skipped, split, seq_len)
    return tok, examples, rejected, references, skipped


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    """The preference pipeline over `split` of the data section `config` (name, task or
    path / splits / *_key, seq_len, tokenizer, eos_id, data_dir); batch_size is global."""
    source = _source(config)
    seq_len = config.seq_len
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise ConfigError(f'data.seq_len={seq_len!r} must be an int >= 2')
    if source == 'pystdlib':
        task = conditional_task.check(config)
        if split not in conditional_task.SPLITS:
            raise ConfigError(f"data split {split!r}: the embedded preference task has "
                              "'train' and 'validation'")
        key = (documents.resolve_data_dir(config.get('data_dir', '')), task)
    else:
        fields = tuple(config.get(k, d) for k, d in FILE_FIELDS.items())
        key = (fields, file_records.stamp(fields[0]))
    tok, examples, rejected, references, skipped = _encoded(
        source, key, split, config.get('tokenizer', 'bytes'), config.get('eos_id', -1), seq_len)
    return PreferencePipeline(
        examples, rejected, references, tokenizer=tok, seq_len=seq_len, batch_size=batch_size,
        seed=seed, process_index=process_index, process_count=process_count,
        num_skipped=skipped, one_pass=one_pass, num_examples=num_examples, split=split)

