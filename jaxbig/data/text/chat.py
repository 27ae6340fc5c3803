"""Chat templates: conversations (lists of {"role", "content"} messages) rendered to text the
way a Hugging Face tokenizer's `apply_chat_template(..., tokenize=False)` renders them.

A template is the Jinja source a tokenizer ships: `chat_template.jinja` beside its
tokenizer.json, or the "chat_template" entry of its tokenizer_config.json (a string, or a
list of named templates: "default" is used). `jaxbig import` copies both files into the
workdir, so an imported run's `data.tokenizer` (its tokenizer.json) finds them. The
template sees `messages`, `add_generation_prompt` and the tokenizer's special tokens
(bos_token, eos_token, ... from tokenizer_config.json), in jinja2's sandbox with the options
transformers uses (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, an unescaped `tojson`; `{% generation %}` blocks render their body).

    template = chat.for_tokenizer('runs/qwen/tokenizer.json')   # None: it has none
    prompt, response = template.split(prompt_messages, response_messages)

`chunks(messages)` cuts a rendered conversation into its assistant turns (the SFT loss's
targets) and the rest. `for_data(path)` falls back to DEFAULT_TEMPLATE (ChatML as plain
text) for a tokenizer without a template. `split` is TRL's rule for a conversational pair:
the prompt rendered with the generation prompt, and the response as what the whole
conversation adds after it (refused in one line when the template does not render the
prompt as a prefix of the whole).
"""

from __future__ import annotations

import datetime
import json
import os

from jaxbig.config import ConfigError

# The documented default for tokenizers without a template (jaxbig's bytes and BPE runs):
# ChatML, as plain text.
DEFAULT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                    "assistant\n{% endif %}")
TEMPLATE_FILE = 'chat_template.jinja'
CONFIG_FILE = 'tokenizer_config.json'
SPECIAL = ('bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token',
           'mask_token')


def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: the body, as rendered."""

        tags = {'generation'}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
            return nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to."""

    def __init__(self, source: str, special: dict | None = None, where: str = 'chat template'):
        import jinja2

        self.where, self.special, self.source = where, dict(special or {}), source
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise ConfigError(f'{where}: not a usable chat template ({e})') from None

    def render(self, messages: list, add_generation_prompt: bool = False) -> str:
        import jinja2

        check_messages(messages, self.where)
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special)
        except jinja2.TemplateError as e:
            raise ConfigError(f'{self.where}: the chat template refused the messages ({e})') \
                from None

    def split(self, prompt: list, response: list, where: str = '') -> tuple[str, str]:
        """(prompt text with the generation prompt, the response text after it); the prompt
        ends with a user or tool message (TRL's rule for adding the generation prompt)."""
        check_messages(prompt, where or self.where)
        if prompt[-1]['role'] not in ('user', 'tool'):
            raise ConfigError(f"{where or self.where}: the prompt ends with a "
                              f"{prompt[-1]['role']!r} message; it must end with a user or tool "
                              'message (continuing a final assistant message is not supported)')
        head = self.render(prompt, add_generation_prompt=True)
        whole = self.render([*prompt, *response])
        if not whole.startswith(head):
            raise ConfigError(f'{where or self.where}: the chat template does not render the '
                              'prompt as a prefix of the whole conversation')
        return head, whole[len(head):]


    def chunks(self, messages: list, where: str = '') -> list[tuple[str, bool]]:
        """The rendered conversation as [(text, is an assistant turn)]: each assistant turn
        is what rendering it adds after the conversation before it with the generation
        prompt (so the generation prompt itself is not part of the turn); their
        concatenation is the whole rendered conversation (else a one-line ConfigError)."""
        check_messages(messages, where or self.where)
        if not any(m['role'] == 'assistant' for m in messages):
            raise ConfigError(f'{where or self.where}: no assistant message to learn from')
        out, done = [], ''
        for i, m in enumerate(messages):
            if m['role'] != 'assistant':
                continue
            head = self.render(messages[:i], add_generation_prompt=True) if i else ''
            whole = self.render(messages[:i + 1])
            if not head.startswith(done) or not whole.startswith(head):
                raise ConfigError(f'{where or self.where}: the chat template does not render '
                                  'each turn as a prefix of the next; cannot mark the '
                                  'assistant turns')
            out += [(head[len(done):], False), (whole[len(head):], True)]
            done = whole
        rest = self.render(messages)
        if not rest.startswith(done):
            raise ConfigError(f'{where or self.where}: the chat template does not render the '
                              'conversation as its turns one after another')
        out.append((rest[len(done):], False))
        return [(text, assistant) for text, assistant in out if text]


def check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get('role'), str) and 'content' in m
            for m in messages):
        raise ConfigError(f'{where}: expected a non-empty list of {{"role", "content"}} '
                          'messages')


def _special_tokens(config: dict) -> dict:
    out = {}
    for key in SPECIAL:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get('content')
        if isinstance(value, str):
            out[key] = value
    return out


def for_data(tokenizer_path: str) -> ChatTemplate:
    """The tokenizer's chat template, or the documented default (DEFAULT_TEMPLATE)."""
    return for_tokenizer(tokenizer_path) or ChatTemplate(DEFAULT_TEMPLATE,
                                                         where='the default chat template')


def tokenizer_config(tokenizer_path: str) -> dict:
    """The tokenizer_config.json beside a tokenizer file ({} without one)."""
    path = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def special_tokens(tokenizer_path: str) -> dict:
    """{'bos_token': '<s>', ...}: the special tokens transformers reads for a tokenizer file
    from the tokenizer_config.json beside it."""
    return _special_tokens(tokenizer_config(tokenizer_path)) if tokenizer_path else {}


def for_tokenizer(tokenizer_path: str) -> ChatTemplate | None:
    """The chat template beside a tokenizer.json (see the module docstring), or None."""
    if not tokenizer_path or not os.path.isfile(tokenizer_path):
        return None
    directory = os.path.dirname(os.path.abspath(tokenizer_path))
    config = tokenizer_config(tokenizer_path)
    source = config.get('chat_template')
    if isinstance(source, list):  # named templates
        source = next((t.get('template') for t in source if t.get('name') == 'default'), None)
    template_path = os.path.join(directory, TEMPLATE_FILE)
    if os.path.isfile(template_path):
        with open(template_path, encoding='utf-8') as f:
            source = f.read()
    if not source:
        return None
    return ChatTemplate(source, _special_tokens(config), where=f'{directory}: chat template')


def copy_beside(source_dir: str, target_dir: str) -> list[str]:
    """Copies a Hugging Face directory's chat template files (chat_template.jinja,
    tokenizer_config.json) into target_dir; -> the names copied."""
    import shutil

    copied = []
    for name in (TEMPLATE_FILE, CONFIG_FILE):
        path = os.path.join(source_dir, name)
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(target_dir, name))
            copied.append(name)
    return copied
