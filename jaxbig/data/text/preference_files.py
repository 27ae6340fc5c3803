"""Preference pairs from local files, in the format TRL and the Hugging Face hub use.

`data.name='files'` with `data.path` = a file, a directory or a glob of JSONL (plain, .gz,
.zst) or Parquet files, as for text corpora (jaxbig.data.text.file_documents: the same
`data.splits`, 'validation=0.01' by default or name=glob pairs). Each record holds

    {"prompt": "...", "chosen": "...", "rejected": "..."}        (keys: data.prompt_key,
                                                                   chosen_key, rejected_key)

plain strings (the response texts follow the prompt directly: no separator is added), or
TRL's conversational form — each a list of {"role", "content"} messages — rendered with the
tokenizer's chat template (jaxbig/data/text/chat.py: an imported model's, from its
tokenizer_config.json / chat_template.jinja); a tokenizer without one refuses it in one line.
A record with a missing key, mixed forms or an empty response is refused in one line naming
its file and record. Pairs are read whole into memory (preference sets are tens of
thousands of pairs).
"""

from __future__ import annotations

import functools

from jaxbig.config import ConfigError
from jaxbig.data.text import chat, file_records


def _check(record, where: str, keys: tuple, tokenizer: str, template) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of one record: plain strings, or the conversational
    form rendered with the tokenizer's chat template (TRL's split: the prompt with its
    generation prompt, each response as what its whole conversation adds after it);
    template() -> the tokenizer's ChatTemplate or None."""
    if not isinstance(record, dict):
        raise ConfigError(f'{where}: a record is a JSON object, got {type(record).__name__}')
    for key in keys:
        if key not in record:
            raise ConfigError(f'{where}: no {key!r} (found {sorted(record)}); set '
                              'data.prompt_key / chosen_key / rejected_key')
    values = [record[k] for k in keys]
    if all(isinstance(v, list) for v in values):
        template = template()
        if template is None:
            raise ConfigError(f'{where}: conversational records (lists of messages) need the '
                              f'tokenizer\'s chat template; data.tokenizer={tokenizer!r} has none')
        prompt, chosen = template.split(values[0], values[1], where)
        _, rejected = template.split(values[0], values[2], where)
        values = [prompt, chosen, rejected]
    for key, value in zip(keys, values):
        if not isinstance(value, str):
            raise ConfigError(f'{where}: {key!r} is a {type(value).__name__}; give all three as '
                              'strings, or all three as lists of messages')
    out = [v.replace('\x00', '') for v in values]
    if not out[1] or not out[2]:
        empty = keys[1] if not out[1] else keys[2]
        raise ConfigError(f'{where}: {empty!r} is empty; every pair needs two responses')
    return tuple(out)


def load_pairs(config, split: str) -> list[tuple[str, str, str, str]]:
    """[(where, prompt, chosen, rejected)] of `split` ('file:record' locations) from the data
    section `config` (path, splits, prompt_key, chosen_key, rejected_key, tokenizer)."""
    keys = tuple(config.get(k, d) for k, d in (('prompt_key', 'prompt'),
                                               ('chosen_key', 'chosen'),
                                               ('rejected_key', 'rejected')))
    tokenizer = config.get('tokenizer', 'bytes')
    template = functools.cache(lambda: chat.for_tokenizer(tokenizer))  # built once, if needed
    return [(where, *_check(record, where, keys, tokenizer, template))
            for where, record in file_records.load_records(config, split, keys)]
