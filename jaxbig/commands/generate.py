"""`jaxbig generate --workdir RUN --prompt TEXT ...`: sample text from a run's checkpoint.

Loads the run (jaxbig.run.load_run), optionally int8-quantizes its kernels (jaxbig.quantize),
and samples with jaxbig.generate: one prompt streams to stdout as it is generated, several
are printed one after another; `--stop` text is never printed.
An encoder-decoder (a model module with its own `generate`, jaxbig.models.t5) reads the
prompt as its encoder input and prints the response only (not streamed). The options
are parsed by jaxbig/cli.py.
"""

from __future__ import annotations

import sys

from jaxbig import generate as gen
from jaxbig import run as run_lib


def main(args) -> int:
    """`jaxbig generate` with the arguments jaxbig/cli.py parsed."""
    run = run_lib.load_run(args.workdir, args.step)
    model, params, step, tok = run.model, run.params, run.step, run.tokenizer
    if args.quantize == 'int8':
        from jaxbig import quantize

        before, params = quantize.kernel_bytes(params), quantize.quantize_params(params)
        after = quantize.kernel_bytes(params)
        print(f'int8 (step {step}): kernel bytes {before:,} float32 -> {after:,} int8+scales '
              f'({before / after:.2f}x smaller); the validation loss change: '
              f'jaxbig quantize --workdir {args.workdir}', file=sys.stderr)
    elif args.quantize not in (None, 'none'):
        raise ValueError(f'--quantize {args.quantize!r}: expected int8')
    texts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file) as f:
            texts.append(f.read())
    if not texts:
        raise ValueError('give --prompt TEXT (repeatable) or --prompt-file FILE')
    stop_text = (args.stop or '').replace('\\n', '\n').replace('\\t', '\t')
    stop = tok.encode(stop_text) if stop_text else None
    from jaxbig.evals.generation import generate_fn, response_texts

    own = generate_fn(model)
    if own is not gen.generate:  # the family's own (an encoder-decoder): prompt -> response
        out, lengths = own(model, params, [tok.encode(t) for t in texts],
                           max_new_tokens=args.max_new_tokens, eos_id=tok.eos_id,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed)
        for text, response in zip(texts, response_texts(tok, out, lengths)):
            response = response.split(stop_text)[0] if stop_text else response
            print(response if len(texts) == 1 else f'--- prompt: {text!r}\n{response}')
        return 0
    single = len(texts) == 1
    stream = gen.Streamer(tok, stop=stop) if single else None
    if single:
        sys.stdout.write(texts[0])
        sys.stdout.flush()
    out, lengths = gen.generate(
        model, params, [tok.encode(t) for t in texts], max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop=stop, eos_id=tok.eos_id, on_tokens=stream,
    )
    if single:
        stream.finish()
        sys.stdout.write('\n')
    else:
        for text, row, n in zip(texts, out, lengths):
            ids = row[:n]
            if stop is not None and n >= len(stop) and (ids[-len(stop):] == stop).all():
                ids = ids[:-len(stop)]
            print(f'--- prompt: {text!r}\n{text}{tok.decode(ids)}')
    return 0
