"""The embedded conditional task (jaxbig.data.pipelines.conditional) as encoder-decoder batches
(`data.pipeline='seq2seq'`): the prompt is the encoder's input, the response + eos the
decoder's targets.

The examples are conditional.py's, cached and held out by file in the same way and
filtered by the same rule (prompt + response + eos <= `data.seq_len` + 1 tokens, so SFT
and seq2seq train on the same examples), then also by the decoder's width: response + eos
<= `data.target_len` (0 = seq_len). One example per row (no packing), in the epoch
permutations of conditional.py (batch i is a pure function of (seed, i); resume is exact;
`one_pass=True` for evaluators, each example once with `example_mask`, as there):

    enc_tokens  int32 [b, seq_len]     prompt ids, right-padded with pad 0
    enc_mask    int32 [b, seq_len]     1 on the prompt
    dec_inputs  int32 [b, target_len]  decoder_start_id, then response + eos shifted right
    dec_targets int32 [b, target_len]  response ids + eos, padded with 0
    dec_mask    float32 [b, target_len] 1 on the targets

`data.decoder_start_id` (0: T5's pad) must be the model's `decoder_start_id` (the
experiment sets both). `generation_examples(n)` and `tokenizer` serve the generated-text
evaluator (jaxbig.evals.generation), which calls jaxbig.models.t5.generate on the prompts.
"""

from __future__ import annotations

import numpy as np

from jaxbig import defaults
from jaxbig.config import ConfigError
from jaxbig.data.builders import conditional_task
from jaxbig.data.pipelines import conditional
from jaxbig.data.text import documents

PAD_ID = 0


def section(task: str = 'name', seq_len: int = 256, target_len: int = 0, **overrides) -> dict:
    """The data section: conditional.py's keys (no packing) + target_len, decoder_start_id."""
    base = {k: v for k, v in defaults.conditional_data(task, seq_len).items() if k != 'pack'}
    return {**base, 'pipeline': 'seq2seq', 'target_len': target_len, 'decoder_start_id': 0,
            **overrides}


def make_rows(examples, indices, seq_len: int, target_len: int, start_id: int) -> dict:
    """The batch of examples[j] for j in `indices` (each (prompt ids, response ids + eos));
    see the module docstring for the arrays."""
    b = len(indices)
    batch = {'enc_tokens': np.full((b, seq_len), PAD_ID, np.int32),
             'enc_mask': np.zeros((b, seq_len), np.int32),
             'dec_inputs': np.full((b, target_len), PAD_ID, np.int32),
             'dec_targets': np.full((b, target_len), PAD_ID, np.int32),
             'dec_mask': np.zeros((b, target_len), np.float32)}
    for row, j in enumerate(indices):
        prompt, response = examples[j]
        n, m = len(prompt), len(response)
        if n > seq_len or m > target_len:
            raise ValueError(f'example {j}: {n} prompt / {m} response tokens > seq_len='
                             f'{seq_len} / target_len={target_len}')
        batch['enc_tokens'][row, :n], batch['enc_mask'][row, :n] = prompt, 1
        batch['dec_targets'][row, :m], batch['dec_mask'][row, :m] = response, 1
        batch['dec_inputs'][row, 0] = start_id
        batch['dec_inputs'][row, 1:m] = response[:-1]
    return batch


class Seq2SeqPipeline(conditional.ConditionalPipeline):
    """conditional.py's unpacked pipeline (its epochs, rows, one pass and generation
    examples) with encoder-decoder rows; get_batch(i) -> the host-local rows of global
    batch i."""

    def __init__(self, examples, references, *, target_len, decoder_start_id, **kwargs):
        super().__init__(examples, references, pack=False, **kwargs)
        self.target_len, self.decoder_start_id = target_len, decoder_start_id

    def make_rows(self, groups) -> dict[str, np.ndarray]:
        return make_rows(self.examples, [group[0] for group in groups], self.seq_len,
                         self.target_len, self.decoder_start_id)


def prepare(config) -> None:
    conditional.prepare(config)


def _int(config, key: str, least: int) -> int:
    value = config.get(key, least)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f'data.{key}={value!r} must be an int >= {least}')
    return value


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    """The seq2seq pipeline over `split` ('train' | 'validation') of `config` (a data
    ConfigDict: task, seq_len, target_len, decoder_start_id, tokenizer, eos_id, data_dir);
    batch_size is global."""
    task = conditional_task.check(config)
    seq_len, target_len = _int(config, 'seq_len', 2), _int(config, 'target_len', 0)
    target_len = target_len or seq_len
    start_id = _int(config, 'decoder_start_id', 0)
    if split not in conditional_task.SPLITS:
        raise ConfigError(f"data split {split!r}: the conditional task has 'train' and "
                          "'validation'")
    data_dir = documents.resolve_data_dir(config.get('data_dir', ''))
    tok, examples, references, skipped = conditional._encoded(
        data_dir, task, split, config.get('tokenizer', 'bytes'), config.get('eos_id', -1),
        seq_len)
    if start_id >= tok.vocab_size:
        raise ConfigError(f'data.decoder_start_id={start_id}: outside the tokenizer '
                          f'vocabulary [0, {tok.vocab_size})')
    fits = [k for k, (_, r) in enumerate(examples) if len(r) <= target_len]
    if not fits:
        raise ConfigError(f'data.target_len={target_len}: no response (+ eos) fits')
    return Seq2SeqPipeline(
        [examples[k] for k in fits], [references[k] for k in fits], tokenizer=tok,
        seq_len=seq_len, target_len=target_len, decoder_start_id=start_id,
        batch_size=batch_size, seed=seed, process_index=process_index,
        process_count=process_count, num_skipped=skipped + len(examples) - len(fits),
        one_pass=one_pass, num_examples=num_examples, split=split)
