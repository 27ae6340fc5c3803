"""Training a subword tokenizer on a config's training split (`jaxbig tokenizer train`).

    kind 'bpe'            byte-level BPE with the `tokenizers` library (GPT-2's scheme: every
                          byte representable, no unknown token), special token
                          '<|endoftext|>' (id 0) separates documents; writes tokenizer.json
    kind 'sentencepiece'  a SentencePiece model (`sentencepiece`, unigram; byte fallback, no
                          whitespace normalisation, so source code round-trips); </s> = eos;
                          writes tokenizer.model

Either file is then `data.tokenizer` (jaxbig.data.text.tokenizers reads both); experiments whose
`model.vocab_size` is 'auto' (experiments/lm.py) take the tokenizer's vocabulary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

from jaxbig.config import ConfigError

KINDS = ('bpe', 'sentencepiece')
EOS = '<|endoftext|>'


def split_texts(data_config, split: str) -> Iterator[str]:
    """The documents of `split` of an LM data section (TFDS, folder or JSONL / Parquet
    files), as text."""
    from jaxbig.data.pipelines import lm
    from jaxbig.data.text import documents

    name = data_config.name
    if name == 'folder':
        records = documents.FolderDocuments(lm._folder_root(data_config), split)
    elif name in ('files', 'hf_disk'):
        if name == 'files':
            from jaxbig.data.text.file_documents import FileDocuments as Records
        else:
            from jaxbig.data.text.hf_disk import HFDiskDocuments as Records
        records = Records(data_config.get('path', ''), split,
                                data_config.get('text_key') or 'text',
                                data_config.get('splits', ''),
                                documents.resolve_data_dir(data_config.get('data_dir', '')))
    else:
        data_dir = documents.resolve_data_dir(data_config.get('data_dir', ''))
        builder = (documents.EMBEDDED[name](data_dir=data_dir) if name in documents.EMBEDDED
                   else documents._tfds_builder(name, data_dir))
        records = documents.TfdsDocuments(builder, split, (data_config.get('text_key') or 'text'))
    for start in range(0, len(records), 256):
        for raw in records.read(range(start, min(start + 256, len(records)))):
            text = raw.replace(b'\0', b'').decode('utf-8', errors='replace')
            if text:
                yield text


def train_bpe(texts, vocab_size: int, out: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    path = os.path.join(out, 'tokenizer.json')
    tok.save(path)
    return path


def train_sentencepiece(texts, vocab_size: int, out: str) -> str:
    import sentencepiece

    def lines():
        for text in texts:
            yield from (line for line in text.split('\n') if line.strip())

    prefix = os.path.join(out, 'tokenizer')
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=prefix, vocab_size=vocab_size,
        model_type='unigram', byte_fallback=True, character_coverage=1.0,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, add_dummy_prefix=False, split_digits=True,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2)
    os.remove(prefix + '.vocab')
    return prefix + '.model'


def train(data_config, *, vocab_size: int, out: str, kind: str = 'bpe') -> str:
    """Trains a `kind` tokenizer of `vocab_size` on data_config.train_split into `out`;
    returns the file's path. Bad input is one ConfigError line; nothing is left on failure."""
    if kind not in KINDS:
        raise ConfigError(f'--kind {kind!r}: expected one of {KINDS}')
    if not 300 <= vocab_size <= 1 << 20:
        raise ConfigError(f'--vocab-size {vocab_size}: expected 300 .. 1048576 (byte-level '
                          'BPE starts from 256 byte tokens)')
    if data_config.get('pipeline', 'lm') != 'lm':
        raise ConfigError(f'data.pipeline={data_config.get("pipeline")!r}: tokenizer training '
                          "reads an LM data section (pipeline 'lm')")
    from jaxbig import data

    data.prepare(data_config)
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    texts = split_texts(data_config, data_config.train_split)
    try:
        return (train_bpe if kind == 'bpe' else train_sentencepiece)(texts, vocab_size, out)
    except RuntimeError as e:  # the trainer's own checks, e.g. a vocab below its characters
        if created:
            shutil.rmtree(out, ignore_errors=True)
        why = str(e).strip().splitlines()[0]
        why = why.split('] ', 1)[-1]  # sentencepiece prefixes the failed C++ check
        raise ConfigError(f'--kind {kind} --vocab-size {vocab_size}: {why}') from None
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
