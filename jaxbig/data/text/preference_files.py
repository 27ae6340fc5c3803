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
import os

from jaxbig.config import ConfigError
from jaxbig.data.text import chat
from jaxbig.data.text import file_documents as fd


def _records(path: str, keys: tuple) -> list[dict]:
    """Every record of one file (the `keys` columns of a Parquet file), in order."""
    if path.endswith('.parquet'):
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        missing = [k for k in keys if k not in names]
        if missing:
            raise ConfigError(f'{path}: no column {missing[0]!r} (found {names}); set '
                              'data.prompt_key / chosen_key / rejected_key')
        return pq.read_table(path, columns=list(keys)).to_pylist()
    with fd._open_text(path) as f:
        lines = [line for line in f if line.strip()]
    try:
        return [fd._loads(line, path, r) for r, line in enumerate(lines)]
    except ValueError as e:
        raise ConfigError(str(e)) from None


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


def stamp(path: str) -> tuple:
    """((relative path, size, mtime ns), ...) of the files `path` names: what a cache of
    their pairs is keyed by (empty when there are none: load_pairs then says why)."""
    try:
        root, rel = fd.find_files(path)
    except ValueError:
        return ()
    return tuple((r, os.path.getsize(os.path.join(root, r)),
                  os.stat(os.path.join(root, r)).st_mtime_ns) for r in rel)


def load_records(config, split: str, keys: tuple) -> list[tuple[str, dict]]:
    """[(where 'file:record', record)] of `split` of the files at config.path (`keys`: the
    columns a Parquet file must have), split by config.splits as for text corpora."""
    try:
        root, rel = fd.find_files(config.get('path', ''))
        records, where, counts = [], [], []
        for r in rel:
            mine = _records(os.path.join(root, r), keys)
            records += mine
            where += [f'{r}:{k + 1}' for k in range(len(mine))]
            counts.append(len(mine))
        ids = fd.split_ids(rel, counts, split, config.get('splits', ''), root)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [(where[i], records[i]) for i in ids.tolist()]


def load_pairs(config, split: str) -> list[tuple[str, str, str, str]]:
    """[(where, prompt, chosen, rejected)] of `split` ('file:record' locations) from the data
    section `config` (path, splits, prompt_key, chosen_key, rejected_key, tokenizer)."""
    keys = tuple(config.get(k, d) for k, d in (('prompt_key', 'prompt'),
                                               ('chosen_key', 'chosen'),
                                               ('rejected_key', 'rejected')))
    tokenizer = config.get('tokenizer', 'bytes')
    template = functools.cache(lambda: chat.for_tokenizer(tokenizer))  # built once, if needed
    return [(where, *_check(record, where, keys, tokenizer, template))
            for where, record in load_records(config, split, keys)]
