"""Generated-text metrics: greedy responses to held-out prompts, scored by exact match and
chrF against the references.

Config: type='generation', split (default data.val_split), num_examples (distinct prompts,
each scored once, spread evenly over the split; the same at every evaluation; 0 = every
example of the split, `generation_examples(0)`; more than the split has: a ConfigError),
batch_size (prompts per generation call; 0 = all at once), max_new_tokens (0 = the longest
reference's tokens + 1).

The data pipeline of the split provides `generation_examples(n) -> [(prompt ids, reference
text)]` and `tokenizer` (jaxbig.data.pipelines.conditional does). Responses are generated greedily
until eos (or max_new_tokens) by the model family's own `generate(model, params, prompts, *,
max_new_tokens, eos_id) -> (tokens [batch, max_new_tokens], lengths [batch])` when its
module defines one (an encoder-decoder), else by `jaxbig.generate.generate` (decoders with
a KV cache or a recurrent state: `init_cache` + `decode`). Each call compiles once per
(prompts, prompt width) shape; later evaluations reuse it. Every process generates every
response (the same prompts, greedy); multi-host runs of it are untested.

Metrics (`<name>/...`), on the texts with surrounding whitespace stripped:
    exact_match  fraction of responses equal to their reference (0..1)
    chrf         sacrebleu's corpus chrF (character 6-grams, beta 2; 0..100)
    num_examples the prompts scored
Process 0 writes the prompts, references and responses to `<workdir>/generations_<name>.json`.
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

from jaxbig.config import ConfigError


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Fraction of hypotheses equal to their reference after stripping whitespace."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
    pairs = zip(hypotheses, references, strict=True)
    return float(np.mean([h.strip() == r.strip() for h, r in pairs]))


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus-level chrF (0..100) of the stripped texts."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf([h.strip() for h in hypotheses],
                                       [[r.strip() for r in references]]).score)


def generate_fn(model):
    """The model family's `generate` (its module's, if it defines one), else jaxbig's."""
    from jaxbig import generate, lora

    module = importlib.import_module(type(lora.unwrap(model)).__module__)
    own = getattr(module, 'generate', None)
    return own if callable(own) else generate.generate


def response_texts(tokenizer, tokens, lengths) -> list[str]:
    """Decoded rows tokens[b, :lengths[b]] without the eos that ended them."""
    out = []
    for row, n in zip(np.asarray(tokens), np.asarray(lengths), strict=True):
        ids = row[:int(n)]
        if len(ids) and ids[-1] == tokenizer.eos_id:
            ids = ids[:-1]
        out.append(tokenizer.decode(ids))
    return out


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'gen'):
        self.num_examples = cfg.get('num_examples', 128)
        self.batch_size = cfg.get('batch_size', 0)
        self.max_new_tokens = cfg.get('max_new_tokens', 0)
        for key in ('num_examples', 'batch_size', 'max_new_tokens'):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f'evals.{name}.{key}={value!r}: must be an int >= 0')
        data_cfg = ctx.config.data
        pipeline = ctx.build_pipeline(data_cfg, split=cfg.get('split', '') or data_cfg.val_split,
                                      batch_size=ctx.process_count)
        if not hasattr(pipeline, 'generation_examples'):
            raise ConfigError(f"evals.{name}.type='generation': data.pipeline="
                              f"{data_cfg.get('pipeline', 'lm')!r} has no prompts and "
                              "references (use data.pipeline='conditional')")
        self.tokenizer = pipeline.tokenizer
        self.examples = pipeline.generation_examples(self.num_examples)
        self.max_new_tokens = self.max_new_tokens or 1 + max(
            len(self.tokenizer.encode(ref)) for _, ref in self.examples)
        self.ctx, self.name = ctx, name
        self.generate = generate_fn(ctx.model)

    def responses(self, params) -> list[str]:
        """Greedy responses to every prompt, in order."""
        prompts = [p for p, _ in self.examples]
        size = self.batch_size or len(prompts)
        out = []
        for start in range(0, len(prompts), size):
            tokens, lengths = self.generate(
                self.ctx.model, params, prompts[start:start + size],
                max_new_tokens=self.max_new_tokens, eos_id=self.tokenizer.eos_id)
            out += response_texts(self.tokenizer, tokens, lengths)
        return out

    def run(self, params) -> dict[str, float]:
        hypotheses = self.responses(params)
        references = [ref for _, ref in self.examples]
        if self.ctx.process_index == 0 and self.ctx.workdir:
            self._save(hypotheses)
        return {f'{self.name}/exact_match': exact_match(hypotheses, references),
                f'{self.name}/chrf': chrf(hypotheses, references),
                f'{self.name}/num_examples': float(len(references))}

    def _save(self, hypotheses):
        rows = [{'prompt': self.tokenizer.decode(p), 'reference': ref, 'response': hyp}
                for (p, ref), hyp in zip(self.examples, hypotheses, strict=True)]
        os.makedirs(self.ctx.workdir, exist_ok=True)
        path = os.path.join(self.ctx.workdir, f'generations_{self.name}.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(rows, f, indent=1)
        os.replace(path + '.tmp', path)
