"""`jaxbig tokenizer train --config FILE.py[:arg] --vocab-size N --out DIR [--kind bpe|
sentencepiece] [--config.a.b=v]`: a subword tokenizer trained on the config's training
split (jaxbig/data/text/tokenizer_training.py)."""

from __future__ import annotations

import argparse
import time


def train_main(args, extra) -> int:
    from jaxbig import experiment
    from jaxbig.data.text import tokenizer_training, tokenizers

    config = experiment.load_config(args.config, extra)
    start = time.perf_counter()
    path = tokenizer_training.train(config.data, vocab_size=args.vocab_size, out=args.out,
                                    kind=args.kind)
    tok = tokenizers.from_config({'tokenizer': path})
    print(f'{args.kind} tokenizer of {tok.vocab_size} tokens (eos id {tok.eos_id}) trained on '
          f'{config.data.name}/{config.data.train_split} in {time.perf_counter() - start:.0f} s '
          f'-> {path}\n  use: jaxbig train --config {args.config} '
          f'--config.data.tokenizer={path} --workdir runs/...')
    return 0


def add_parser(add):
    """Registers `tokenizer train` with `add(name, help) -> parser` (jaxbig/cli.py)."""
    p = add('tokenizer', 'tokenizer tools: train (a BPE or SentencePiece tokenizer)')
    sub = p.add_subparsers(dest='tokenizer_command', required=True, metavar='ACTION')
    t = sub.add_parser('train', help="train on the config's training split",
                       description="train a subword tokenizer on the config's training split",
                       allow_abbrev=False, formatter_class=p.formatter_class)
    t.add_argument('--config', required=True, metavar='FILE.py[:ARG]',
                   help='an experiment with an LM data section (e.g. experiments/lm.py)')
    t.add_argument('--vocab-size', type=int, required=True, help='tokens in the vocabulary')
    t.add_argument('--out', required=True, help='directory for tokenizer.json / tokenizer.model')
    t.add_argument('--kind', default='bpe', choices=['bpe', 'sentencepiece'],
                   help='byte-level BPE (tokenizers) or SentencePiece unigram')
    t.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                   help='show full tracebacks')
    t.set_defaults(run=train_main)
    return p
