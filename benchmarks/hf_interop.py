"""Hugging Face interop figures, measured in one run (benchmarks, not tests):

    python benchmarks/hf_interop.py import     # `jaxbig import` of a random 1b-shaped Llama
    python benchmarks/hf_interop.py import --size llama3.2-1b [--rope default]
    python benchmarks/hf_interop.py generate   # greedy tokens/s: jaxbig vs transformers

import: writes a random checkpoint of `jaxbig.models.gpt.SIZES[--size]`'s shape as a Llama
directory (bfloat16 safetensors in 2 GB shards, written tensor by tensor with numpy, no
torch), then times `jaxbig import` in a child process and reports its peak resident memory
(ru_maxrss) against the checkpoint's size: tensors are read one at a time, so the peak is
about the imported params (held on the device, here the host) plus one tensor.
`--size llama3.2-1b` is Llama-3.2-1B's config.json (16 layers, 32 / 8 kv heads, 2048 wide,
128,256-token vocabulary, tied head, rope_type llama3 with factor 32); `--rope default`
writes the same tensors without the rope scaling, so code from before the llama3 kind can
import it as the reference.

generate: a random GPT-2-small-shaped model built by transformers, imported; greedy
generation of --new-tokens after a --prompt-len prompt at batch 1 and 8, jaxbig's compiled
KV-cache loop (after a warm-up call) against `model.generate(do_sample=False)` (torch eager,
its KV cache), both producing the same tokens (checked); tokens/s = batch * new / seconds.
Needs the test extra (torch, transformers).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


LLAMA_3_2_1B = dict(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048, mlp_dim=8192,
                    vocab=128256, tied=True, rope=dict(rope_type='llama3', factor=32.0,
                                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                                       original_max_position_embeddings=8192))


def write_random_llama(directory: str, shape: dict, vocab: int, shard_bytes: int = 2 << 30,
                       rope: dict | None = None, tied: bool = False):
    import ml_dtypes

    from jaxbig.interop.tensors import write_safetensors

    e, m, h = shape['embed_dim'], shape['mlp_dim'], shape['num_heads']
    kv = shape.get('num_kv_heads') or h
    kv_dim = e // h * kv
    names = {'model.embed_tokens.weight': (vocab, e), 'model.norm.weight': (e,)}
    if not tied:
        names['lm_head.weight'] = (vocab, e)
    for i in range(shape['num_layers']):
        p = f'model.layers.{i}.'
        names.update({p + 'self_attn.q_proj.weight': (e, e),
                      p + 'self_attn.k_proj.weight': (kv_dim, e),
                      p + 'self_attn.v_proj.weight': (kv_dim, e),
                      p + 'self_attn.o_proj.weight': (e, e),
                      p + 'mlp.gate_proj.weight': (m, e), p + 'mlp.up_proj.weight': (m, e),
                      p + 'mlp.down_proj.weight': (e, m), p + 'input_layernorm.weight': (e,),
                      p + 'post_attention_layernorm.weight': (e,)})
    rng = np.random.default_rng(0)
    shards, current, size, weight_map = [], {}, 0, {}
    for name, s in names.items():
        current[name] = (rng.standard_normal(s, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
        size += current[name].nbytes
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    total = 0
    for k, tensors in enumerate(shards):
        file = f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
        write_safetensors(os.path.join(directory, file), tensors)
        weight_map.update({n: file for n in tensors})
        total += sum(t.nbytes for t in tensors.values())
    with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f)
    config = dict(architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=vocab,
                  hidden_size=e, intermediate_size=m, num_hidden_layers=shape['num_layers'],
                  num_attention_heads=h, num_key_value_heads=kv, rms_norm_eps=1e-6,
                  hidden_act='silu', tie_word_embeddings=tied, torch_dtype='bfloat16',
                  max_position_embeddings=131072,
                  rope_parameters=dict(rope or {'rope_type': 'default'}, rope_theta=500000.0))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f)
    return total


def bench_import(args):
    from jaxbig.models.gpt import SIZES

    if args.size == 'llama3.2-1b':
        shape = LLAMA_3_2_1B
        extra = dict(vocab=shape['vocab'], tied=True,
                     rope=shape['rope'] if args.rope == 'llama3' else None)
    else:
        shape, extra = SIZES[args.size], dict(vocab=args.vocab)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        hf_dir, run = os.path.join(tmp, 'hf'), os.path.join(tmp, 'run')
        os.makedirs(hf_dir)
        t0 = time.perf_counter()
        size = write_random_llama(hf_dir, shape, **extra)
        print(f'wrote a random {args.size} Llama ({size / 2**30:.2f} GiB bfloat16) in '
              f'{time.perf_counter() - t0:.0f} s')
        t0 = time.perf_counter()
        subprocess.run([sys.executable, '-m', 'jaxbig', 'import', hf_dir, '--workdir', run],
                       check=True, stdout=subprocess.DEVNULL, cwd=args.code or None)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(f'jaxbig import: {seconds:.0f} s, peak resident memory {peak / 2**30:.2f} GiB '
              f'= {peak / size:.2f}x the checkpoint')


def bench_generate(args):
    import torch
    import transformers

    from jaxbig import generate as gen
    from jaxbig import run as run_lib
    from jaxbig.interop import hf

    torch.set_num_threads(os.cpu_count())
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                     n_positions=1024)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        model.save_pretrained(os.path.join(tmp, 'hf'))
        hf.import_dir(os.path.join(tmp, 'hf'), os.path.join(tmp, 'run'))
        run = run_lib.load_run(os.path.join(tmp, 'run'))
    rng = np.random.default_rng(0)
    n = args.new_tokens
    print(f'GPT-2-small shape, float32, prompt {args.prompt_len}, {n} new tokens, greedy')
    for batch in (1, 8):
        prompts = rng.integers(0, config.vocab_size, (batch, args.prompt_len))

        def ours():
            return gen.generate(run.model, run.params, list(prompts), max_new_tokens=n,
                                temperature=0)[0]

        def theirs():
            with torch.no_grad():
                return model.generate(torch.tensor(prompts), do_sample=False, max_new_tokens=n,
                                      min_new_tokens=n,
                                      attention_mask=torch.ones(prompts.shape, dtype=torch.long)
                                      )[:, args.prompt_len:].numpy()

        same = np.array_equal(ours(), theirs())  # also the warm-up (compilation) call
        t_ours, t_theirs = (min(_timed(f) for _ in range(args.repeats)) for f in (ours, theirs))
        print(f'  batch {batch}: jaxbig {batch * n / t_ours:7.1f} tok/s, transformers '
              f'{batch * n / t_theirs:7.1f} tok/s, ratio {t_theirs / t_ours:.2f}x; '
              f'same tokens: {same}')


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('what', choices=['import', 'generate'])
    parser.add_argument('--size', default='1b', help="import: a jaxbig.models.gpt.SIZES name "
                                                     "or 'llama3.2-1b'")
    parser.add_argument('--rope', default='llama3', choices=['llama3', 'default'],
                        help="import --size llama3.2-1b: its rope scaling, or none")
    parser.add_argument('--vocab', type=int, default=32000, help='import: vocabulary size')
    parser.add_argument('--prompt-len', type=int, default=128)
    parser.add_argument('--new-tokens', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--tmp', default=None, help='scratch directory (default: the system)')
    parser.add_argument('--code', default='', help='import: run `python -m jaxbig` from this '
                                                   'checkout (e.g. an older one, as reference)')
    args = parser.parse_args()
    bench_import(args) if args.what == 'import' else bench_generate(args)


if __name__ == '__main__':
    main()
