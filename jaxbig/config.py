"""Experiment configs: load `experiments/*.py[:arg]`, apply overrides, validate, freeze.

An experiment file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`.
The command line names it big_vision style:

        --config experiments/lm.py:size=small,steps=200  --config.optimizer.lr=1e-3

`arg` is passed to `get_config` verbatim; `parse_arg` turns `key=value,...` into a typed
ConfigDict for the experiment to read. Overrides must name an existing key and carry a value
of the key's type; anything else raises `ConfigError` with one line naming the key (and the
closest valid key, for typos).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Iterable
from typing import Any

import ml_collections

from jaxbig.errors import ConfigError  # noqa: F401  (re-exported: jaxbig.config.ConfigError)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `'k1=v1,k2=v2'` into a ConfigDict typed by `defaults`.

    Every key must appear in `defaults`; values are converted to the default's type.
    A bare `k` (no `=`) sets a boolean default to True.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(','):
        if not item:
            continue
        key, sep, value = item.partition('=')
        key = key.strip()
        if key not in defaults:
            raise ConfigError(_unknown_key_message(f'config arg {key!r}', key, defaults))
        if not sep:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f'config arg {key!r} needs a value ({key}=...)')
            value = 'true'
        out[key] = _coerce(value, defaults[key], f'config arg {key!r}')
    return out


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/experiment.py[:arg]` and returns its (unlocked) config."""
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'--config {path!r}: no such file')
    module_spec = importlib.util.spec_from_file_location('_jaxbig_experiment', path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f'--config {path}: syntax error at line {e.lineno}: {e.msg}') from e
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'--config {path}: the file defines no get_config(arg)')
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'--config {path}: get_config must return an ml_collections.ConfigDict')
    from jaxbig import defaults  # the keys every data section has (data.prefetch)

    defaults.complete_data(config)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]):
    """Sets `dotted.key = value` (value as a string) on `config`, checking key and type."""
    for key, raw in overrides:
        parent, leaf = _walk(config, key)
        old = parent[leaf]
        if isinstance(old, ml_collections.ConfigDict):
            raise ConfigError(
                f'--config.{key}: is a section, set one of its keys '
                f'({", ".join(sorted(old.keys()))})'
            )
        if old == AUTO and raw != AUTO:  # typed as the value 'auto' stands for
            old = _AUTO_TYPES.get(leaf, old)
        in_list = not isinstance(parent, ml_collections.ConfigDict)
        if in_list and type(old) is int and isinstance(raw, str) and not raw.lstrip('-').isdigit():
            old = float(old)  # a list entry's number (a weight written as 3) takes 0.5
        value = _coerce(raw, old, f'--config.{key}')
        if not in_list:
            with parent.ignore_type():
                parent[leaf] = value
        else:  # an entry of a list of dicts (data.mixture.<label>.<key>)
            parent[leaf] = value
    return config


def resolve(package: str, name: str, what: str, provides: str):
    """The module `<package>.<name>`, which must define `provides`: how a config's names
    pick code, with no registry (`model.name='gpt'` -> `jaxbig.models.gpt.Model`). `what`
    names the config key for the error: an unknown name (or a helper module such as
    `models.layers`) raises ConfigError listing the modules that do define `provides`; an
    import error inside an existing module propagates unchanged."""
    import pkgutil

    module_name = f'{package}.{name}'
    if isinstance(name, str) and name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:  # the module exists; one of its own imports failed
                raise
        else:
            if hasattr(module, provides):
                return module
    path = importlib.import_module(package).__path__
    available = [m.name for m in pkgutil.iter_modules(path) if not m.name.startswith('_')]
    available = sorted(m for m in available
                       if hasattr(importlib.import_module(f'{package}.{m}'), provides))
    raise ConfigError(
        f'{what}={name!r}: no module {module_name} defining {provides} '
        f'(available: {", ".join(available)})'
    )


AUTO = 'auto'
# The type each 'auto' key resolves to: an override of it is checked against that type.
_AUTO_TYPES = {'scan_layers': False, 'remat': '', 'warmup_steps': 0, 'vocab_size': 0,
               'num_classes': 0}


def split_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith('--config.'):
            raise ConfigError(
                f'unrecognised argument {arg!r} (overrides look like --config.optimizer.lr=1e-3)'
            )
        key, sep, value = arg[len('--config.') :].partition('=')
        if not sep:
            if i + 1 >= len(extra):
                raise ConfigError(f'--config.{key}: missing value')
            value, i = extra[i + 1], i + 1
        out.append((key, value))
        i += 1
    return out


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += flat_keys(v, f'{prefix}{k}.')
        else:
            keys.append(prefix + k)
    return keys


def _walk(config, dotted: str):
    """(the section or list entry that holds `dotted`'s last part, that part). A list of
    dicts (data.mixture) is entered by an entry's label (its `label`, else its `name`) or
    its index: `data.mixture.code.weight`, `data.mixture.0.weight`."""
    node = config
    parts = dotted.split('.')
    for i, part in enumerate(parts):
        if isinstance(node, list):
            node = _list_entry(node, part, dotted)
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            raise ConfigError(_unknown_key_message(f'--config.{dotted}', dotted, flat_keys(config)))
        if i == len(parts) - 1:
            return node, part
        node = node[part]


def _list_entry(entries: list, part: str, dotted: str) -> dict:
    """The dict of `entries` that `part` names (label, name or index), as a {part: entry}
    node for _walk; ConfigError listing the names if none or several match."""
    names = [str(e.get('label') or e.get('name') or k) if isinstance(e, dict) else str(k)
             for k, e in enumerate(entries)]
    matches = [k for k, n in enumerate(names) if n == part] or (
        [int(part)] if part.isdigit() and int(part) < len(entries) else [])
    if len(matches) != 1 or not isinstance(entries[matches[0]], dict):
        raise ConfigError(f'--config.{dotted}: {part!r} names no single entry of the list '
                          f'(its entries: {names}, or an index)')
    return {part: entries[matches[0]]}


def _unknown_key_message(where: str, key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ''
    return f'{where}: unknown config key {key!r}{hint}'


_BOOLS = {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}


def _coerce(raw: Any, old: Any, where: str) -> Any:
    """Converts the string `raw` to the type of the existing value `old`."""
    if not isinstance(raw, str):
        return raw

    def fail(kind):
        return ConfigError(f'{where}: expected {kind}, got {raw!r}')

    if isinstance(old, bool):
        if raw.lower() not in _BOOLS:
            raise fail('a boolean (true/false)')
        return _BOOLS[raw.lower()]
    if isinstance(old, int):
        try:
            return int(raw)
        except ValueError:
            try:
                as_float = float(raw)  # accept '1e3' for ints when exact
            except ValueError:
                raise fail('an integer') from None
            if not as_float.is_integer():
                raise fail('an integer') from None
            return int(as_float)
    if isinstance(old, float):
        try:
            return float(raw)
        except ValueError:
            raise fail('a number') from None
    if isinstance(old, str):
        return raw
    if isinstance(old, (tuple, list)) or old is None:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            if old is None:
                return raw
            raise fail(f'a {type(old).__name__} literal like (1, 2)') from None
        if isinstance(old, (tuple, list)):
            if not isinstance(value, (tuple, list)):
                raise fail(f'a {type(old).__name__} literal like (1, 2)')
            return type(old)(value)
        return value
    raise fail(type(old).__name__)
