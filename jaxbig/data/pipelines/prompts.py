"""The prompts pipeline (`data.pipeline='prompts'`): prompts and their reference answers for
online RL (jaxbig.losses.grpo samples the responses itself, inside the train step).

Examples are the embedded conditional task's (jaxbig/data/builders/conditional_task.py;
`data.task` = 'name' | 'body'; validation prompts from held-out files), tokenized as for SFT
(prompt ids, response ids + eos). Rows, one prompt each:

    prompt      int32[b, P]  LEFT-padded with eos to P = data.prompt_len (the layout the
                             KV-cache sampler decodes: jaxbig.generate.left_pad)
    prompt_positions int32[b, P]  0.. on the prompt's tokens, -1 on padding
    answer      int32[b, A]  the reference response + eos, padded with -1 to A = data.answer_len

Examples whose prompt exceeds P or answer A tokens are left out (`num_skipped`). Order,
epochs, resume and the evaluators' one pass (`example_mask`) are the SFT pipeline's (pure
functions of (seed, batch index)); `generation_examples` serves the generation evaluator.
"""

from __future__ import annotations

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data.builders import conditional_task
from jaxbig.data.pipelines import conditional
from jaxbig.data.text import documents


def prepare(config) -> None:
    conditional_task.prepare_examples(config)


class PromptPipeline(conditional.ConditionalPipeline):
    """Rows of (prompt, answer); see the module docstring."""

    def __init__(self, examples, references, *, prompt_len: int, answer_len: int, **kwargs):
        super().__init__(examples, references, pack=False, seq_len=prompt_len + answer_len,
                         **kwargs)
        self.prompt_len, self.answer_len = prompt_len, answer_len

    def make_rows(self, groups) -> dict[str, np.ndarray]:
        b, width = len(groups), self.prompt_len
        out = {'prompt': np.full((b, width), self.tokenizer.eos_id, np.int32),
               'prompt_positions': np.full((b, width), -1, np.int32),
               'answer': np.full((b, self.answer_len), -1, np.int32)}
        for row, (j,) in enumerate(groups):
            prompt, answer = self.examples[j]
            out['prompt'][row, width - len(prompt):] = prompt
            out['prompt_positions'][row, width - len(prompt):] = np.arange(len(prompt))
            out['answer'][row, :len(answer)] = answer
        return out


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    """The prompts of `split` ('train' | 'validation') of the data section `config` (task,
    prompt_len, answer_len, tokenizer, eos_id, data_dir); batch_size (prompts) is global."""
    task = conditional_task.check(config)
    prompt_len, answer_len = config.get('prompt_len'), config.get('answer_len')
    for key, value in (('prompt_len', prompt_len), ('answer_len', answer_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f'data.{key}={value!r} must be an int >= 1')
    if split not in conditional_task.SPLITS:
        raise ConfigError(f"data split {split!r}: the prompts have 'train' and 'validation'")
    data_dir = documents.resolve_data_dir(config.get('data_dir', ''))
    tok, examples, references, skipped = conditional._encoded(
        data_dir, task, split, config.get('tokenizer', 'bytes'), config.get('eos_id', -1),
        prompt_len + answer_len)
    kept = [k for k, (p, r) in enumerate(examples) if len(p) <= prompt_len and
            len(r) <= answer_len]
    return PromptPipeline(
        [examples[k] for k in kept], [references[k] for k in kept], prompt_len=prompt_len,
        answer_len=answer_len, tokenizer=tok, batch_size=batch_size, seed=seed,
        process_index=process_index, process_count=process_count,
        num_skipped=skipped + len(examples) - len(kept), one_pass=one_pass,
        num_examples=num_examples, split=split)
