"""`jaxbig import DIR --workdir RUN` and `jaxbig export --workdir RUN --out DIR`: Hugging
Face model directories in and out (jaxbig/interop/hf.py does the work)."""

from __future__ import annotations

import json
import os
import time

from jaxbig.config import ConfigError

# the decoder families of interop/decoders.py
DECODERS = ('gpt2', 'llama', 'gemma', 'olmo2', 'gpt_neox', 'phi3', 'llama_moe')


def import_main(args, extra) -> int:
    from jaxbig.interop import hf

    if extra:
        raise ConfigError(f'import: unrecognised arguments {" ".join(extra)}')
    start = time.perf_counter()
    info = hf.import_dir(args.directory, args.workdir, param_dtype=args.param_dtype)
    print(f'{args.directory}: {info["family"]} ({info["num_params"]:,} parameters, '
          f'{info["dtype"]}) -> {args.workdir} step 0 in {time.perf_counter() - start:.1f} s')
    if info['family'] in DECODERS:
        print(f'  next: jaxbig generate --workdir {args.workdir} --prompt "def main(" '
              f'--temperature 0\n'
              f'        jaxbig train --config experiments/lm.py:init={args.workdir} '
              f'--workdir runs/continued')
    else:  # vision / two-tower: its data section is a placeholder to override
        print(f'  next: fine-tune from it with init_from (init={args.workdir}); set its '
              f'data section to your dataset (see {args.workdir}/config.json)')
    return 0


def export_main(args, extra) -> int:
    from jaxbig.interop import hf

    if extra:
        raise ConfigError(f'export: unrecognised arguments {" ".join(extra)}')
    info = hf.export_run(args.workdir, args.out, None if args.step < 0 else args.step,
                         as_family=args.as_family)
    with open(os.path.join(args.out, 'config.json')) as f:
        architecture = json.load(f)['architectures'][0]
    print(f'{args.workdir} step {info["step"]}: {info["tensors"]} tensors ({info["dtype"]}) '
          f'as {info["family"]} -> {os.path.join(args.out, "model.safetensors")}; load with '
          f'transformers.{architecture}.from_pretrained({args.out!r})')
    return 0


def add_parsers(add):
    """Registers both subcommands with `add(name, help) -> parser` (jaxbig/cli.py)."""
    p = add('import', 'a Hugging Face model directory (GPT-2, Llama 1-3, Mistral, Qwen2 / 3, '
                      'Gemma, OLMo 2, GPT-NeoX, Phi-3, ViT, CLIP, BERT, T5) -> a jaxbig workdir '
                      'at step 0')
    p.add_argument('directory', help='config.json + model.safetensors (or sharded) + '
                                     'tokenizer.json, as save_pretrained writes them')
    p.add_argument('--workdir', required=True, help='the new workdir (must not hold a run)')
    p.add_argument('--param-dtype', default='', help="e.g. float32; '' = the checkpoint's")
    p.set_defaults(run=import_main)
    p = add('export', "a run's params (LoRA merged) -> a directory transformers loads")
    p.add_argument('--workdir', required=True, help='a jaxbig workdir with a GPT')
    p.add_argument('--out', required=True, help='the directory to write (new or empty)')
    p.add_argument('--step', type=int, default=-1, help='checkpoint step; -1 = latest')
    p.add_argument('--as', dest='as_family', default='', choices=['', *DECODERS],
                   help="decoder family to write; '' = the first the model's switches match")
    p.set_defaults(run=export_main)
