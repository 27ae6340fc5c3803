"""`JaxbigLM`: lm-evaluation-harness's language-model interface on a jaxbig run, registered
with lm-eval as `jaxbig` once this module is imported:

    import jaxbig.harness, lm_eval
    lm_eval.simple_evaluate(model='jaxbig', model_args='workdir=runs/lm', tasks=[...])

(lm-eval finds models in its own registry only, with no plugin discovery, so its command
line cannot load this class; `jaxbig harness` is that command.)

model_args: workdir (a jaxbig run), step (default: latest), batch_size (16), max_length
(default: the model's position table, else the run's training data.seq_len), max_gen_toks
(256, as lm-eval's Hugging Face backend), add_bos_token (as that backend's: None = the
tokenizer's own post-processor decides).

Tokenisation follows lm-eval's Hugging Face backend (`HFLM`) exactly, so that a model
imported from Hugging Face scores what `lm_eval --model hf` scores for the original:
  - loglikelihood (via lm-eval's TemplateLM): trailing whitespace of the context moves to the
    continuation; context + continuation are encoded together and split at the context's
    length; an empty context is the prefix token (BOS if the tokenizer has one, else EOS);
  - loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens;
  - generate_until: the context left-truncated to max_length - max_gen_toks, greedy decoding
    (sampling requests are refused), the text cut at the first `until` string (the EOS
    text is always one); special tokens are not decoded;
  - apply_chat_template (`--apply-chat-template`): the tokenizer's chat template
    (jaxbig.data.text.chat), with transformers' continue_final_message rule when lm-eval
    asks for no generation prompt (an assistant prefill).
The device work is jaxbig.harness.scoring.Scorer.
"""

from __future__ import annotations

import json
import os

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from jaxbig.harness.scoring import Scorer

# what lm-eval hands every model beside its model_args (the device and batch-size search
# are jaxbig's own business: the run's mesh, a fixed batch)
PASSED_BY_LM_EVAL = ('device', 'max_batch_size')


def bos_id(tok):
    """The tokenizer's beginning-of-sequence id: a tokenizer.json's `bos_token` from the
    tokenizer_config.json beside it (as transformers reads it), else None."""
    from jaxbig.data.text import chat

    path = getattr(tok, 'path', None)
    bos = chat.special_tokens(path).get('bos_token') if path else None
    return tok.token_to_id(bos) if bos else None


def default_max_length(config) -> int:
    """The model's position table (model.max_len) if it has one, else the run's training
    sequence length (data.seq_len)."""
    return int(config.model.get('max_len') or 0) or int(config.data.get('seq_len') or 0)


@register_model('jaxbig')
class JaxbigLM(TemplateLM):
    """See the module docstring. Build from a workdir, or with `from_parts` from a model in
    memory (the training evaluator)."""

    def __init__(self, workdir: str | None = None, step: int | None = None,
                 batch_size: int | str = 16, max_length: int | None = None,
                 max_gen_toks: int = 256, add_bos_token: bool | None = None, *,
                 parts=None, **other):
        super().__init__()
        unknown = sorted(set(other) - set(PASSED_BY_LM_EVAL))
        if unknown:
            raise ValueError(f'model_args {unknown}: not arguments of the jaxbig model (workdir, '
                             'step, batch_size, max_length, max_gen_toks, add_bos_token)')
        if parts is None:
            if not workdir:
                raise ValueError("model_args: give workdir=RUN (a jaxbig run's directory)")
            parts, step = load_parts(workdir, None if step in (None, '', -1) else int(step))
        self.step = step  # the checkpoint's step (None: a model in memory)
        model, params, tokenizer, config, mesh = parts
        check_decoder(model)
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        self.max_gen_toks = int(max_gen_toks)
        batch = 16 if str(batch_size).startswith('auto') else int(batch_size)
        self._max_length = int(max_length or default_max_length(config))
        self.scorer = Scorer(model, params, batch_size=batch, max_length=self._max_length,
                             mesh=mesh)
        self._bos = bos_id(tokenizer)
        if tokenizer.eos_id is None and self._bos is None:
            raise ValueError('the run\'s tokenizer has no end-of-sequence token (data.eos_id): '
                             'the harness needs one as the empty context and stop')

    @classmethod
    def from_parts(cls, model, params, tokenizer, config, mesh=None, step=None, **kwargs):
        return cls(parts=(model, params, tokenizer, config, mesh), step=step, **kwargs)

    # ---------------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id if self.tokenizer.eos_id is not None else self._bos

    @property
    def prefix_token_id(self) -> int:
        return self._bos if self._bos is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs) -> list[int]:
        special = (add_special_tokens if add_special_tokens is not None else
                   self.add_bos_token if self.add_bos_token is not None else True)
        if (add_special_tokens is None and self._bos is not None
                and string.startswith(self.tokenizer.decode([self._bos]))):
            special = False
        ids = [int(i) for i in self.tokenizer.encode(string, add_special_tokens=special)]
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids) -> str:
        special = {self.tokenizer.eos_id, self._bos} - {None}
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in special])

    # ---------------------------------------------------------------- requests
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results = self.scorer.loglikelihoods([(c, x) for _, c, x in requests])
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial('loglikelihood', key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        windows, owner = [], []
        for i, (string,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm)):
            for context, target in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((context, target))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self.scorer.loglikelihoods(windows), strict=True):
            totals[i] += logp
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial('loglikelihood_rolling', request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from jaxbig.data.text.tokenizers import ByteTokenizer

        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str),
                              []).append(i)
        out = [None] * len(requests)
        eos_text = self.tok_decode_special(self.eot_token_id)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks)
            if kwargs.get('do_sample') or float(kwargs.get('temperature') or 0) > 0:
                raise ValueError('jaxbig harness decodes greedily; a task asks for sampling '
                                 f'({requests[indices[0]].args[1]})')
            until = handle_stop_sequences(kwargs.pop('until', None), eos=eos_text)
            real = [u for u in until if u and u != eos_text]
            # a byte tokenizer's stop bytes are the stop text itself: stop the loop early
            stop = (self.tokenizer.encode(real[0]).tolist()
                    if len(real) == 1 and isinstance(self.tokenizer, ByteTokenizer) else None)
            contexts = [self.tok_encode(requests[i].args[0]) or [self.prefix_token_id]
                        for i in indices]
            generated = self.scorer.generate(contexts, max_new_tokens=int(kwargs['max_gen_toks']),
                                             eos_id=self.eot_token_id, stop=stop)
            for i, ids in zip(indices, generated, strict=True):
                text = self.tok_decode(ids)
                for term in until:
                    if term:
                        text = text.split(term)[0]
                out[i] = text
                self.cache_hook.add_partial('generate_until', requests[i].args, text)
        return out

    def tok_decode_special(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    # ---------------------------------------------------------------- chat templates
    def _template(self):
        from jaxbig.data.text import chat

        template = chat.for_tokenizer(getattr(self.tokenizer, 'path', '') or '')
        if template is None:
            raise ValueError("apply_chat_template: the run's tokenizer has no chat template "
                             '(chat_template.jinja or tokenizer_config.json beside its '
                             'tokenizer.json)')
        return template

    @property
    def tokenizer_name(self) -> str:
        return os.path.dirname(getattr(self.tokenizer, 'path', '') or '') or 'bytes'

    def chat_template(self, chat_template=False) -> str | None:
        """The template's source when lm-eval is asked to apply one (for its records)."""
        return self._template().source if chat_template else None

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        """`chat_history` rendered as transformers' apply_chat_template(tokenize=False,
        add_generation_prompt, continue_final_message=not add_generation_prompt) renders it
        (the HF backend's call): without the generation prompt, the text stops right after
        the final message's content (an assistant prefill the model continues)."""
        template = self._template()
        text = template.render(list(chat_history), add_generation_prompt=add_generation_prompt)
        if add_generation_prompt:
            return text
        final = chat_history[-1]['content']
        if final.strip() not in text:
            raise ValueError('apply_chat_template: the template does not render the final '
                             'message, so it cannot be continued')
        at = text.rindex(final.strip())
        keep = (len(final.lstrip()) if text[at:at + len(final.lstrip())] == final
                else len(final.strip()))
        return text[:at + keep]


DECODERS = ('jaxbig.models.gpt', 'jaxbig.models.lstm')


def check_decoder(model) -> None:
    """A one-line refusal unless `model` is a decoder language model (GPT / Llama-style,
    LSTM; LoRA-wrapped too): the harness scores next-token log-probabilities."""
    from jaxbig import lora

    family = type(lora.unwrap(model)).__module__
    if family not in DECODERS:
        raise ValueError(f'jaxbig harness scores decoder language models ({", ".join(DECODERS)}'
                         f'); this run\'s model is {family}')


def load_parts(workdir: str, step: int | None):
    """((model, params, tokenizer, config, mesh), step) of a run for the harness: params
    placed in their shardings on a mesh built from the run's `parallel` section (the devices
    here)."""
    from jaxbig import models
    from jaxbig import run as run_lib
    from jaxbig.harness import placement

    config = run_lib.read_config(workdir)
    check_decoder(models.from_config(config))
    mesh, shardings = placement.params_shardings(config)
    run = run_lib.load_run(workdir, step, params_shardings=shardings)
    return (run.model, run.params, run.tokenizer, config, mesh), run.step
