"""Safetensors files as `transformers` writes them: one `model.safetensors`, or shards
`model-0000k-of-0000n.safetensors` named by `model.safetensors.index.json`'s weight_map.

`TensorReader` opens them through the `safetensors` package (its flax API: bfloat16 and
float16 arrive with their dtype, which numpy's API cannot represent), hands out one tensor
at a time as a host numpy array (bfloat16 via ml_dtypes), and remembers which names were
read so that the caller can list what a name map left over. `write_safetensors` writes a
dict of numpy arrays as one file (with the 'format': 'pt' metadata transformers expects).
No torch is needed for either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from jaxbig.config import ConfigError

TOKENIZER_FILE = 'tokenizer.json'

SINGLE = 'model.safetensors'
INDEX = 'model.safetensors.index.json'


def read_json(path: str) -> dict:
    """A JSON object from `path`; anything else is one ConfigError line naming the file."""
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f'{path}: not readable as JSON ({str(e).splitlines()[0]})') from None
    if not isinstance(value, dict):
        raise ConfigError(f'{path}: expected a JSON object, found {type(value).__name__}')
    return value


def first_line(error: Exception) -> str:
    """'Type: the first line of its message', for one-line errors about a user's file."""
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0]}' if text else type(error).__name__


class TensorReader:
    """Name -> tensor over a model directory's safetensors files, read lazily."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        single, index = os.path.join(directory, SINGLE), os.path.join(directory, INDEX)
        if os.path.isfile(index):
            weight_map = read_json(index).get('weight_map')
            if not isinstance(weight_map, dict):
                raise ConfigError(f'{index}: no weight_map object')
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            files, weight_map = [SINGLE], None
        else:
            raise ConfigError(f'{directory}: no {SINGLE} or {INDEX} (no weights to import)')
        self._files = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise ConfigError(f'{directory}: {INDEX} names {name}, which is missing')
            try:
                self._files[name] = safe_open(path, framework='flax')
            except Exception as e:  # noqa: BLE001 (SafetensorError, OSError: the user's file)
                raise ConfigError(f'{path}: not a readable safetensors file '
                                  f'({first_line(e)})') from None
        self._where = {}
        for name, handle in self._files.items():
            for key in handle.keys():
                self._where[key] = name
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._where))
            if missing:
                raise ConfigError(f'{directory}: tensors listed in {INDEX} but absent: '
                                  f'{", ".join(missing[:5])}')
        self.read: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def dtype(self, name: str) -> str:
        """The stored dtype as safetensors names it ('F32', 'BF16', 'F16', ...)."""
        return self._files[self._where[name]].get_slice(name).get_dtype()

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` as a host numpy array in its stored dtype."""
        if name not in self._where:
            raise KeyError(name)
        self.read.add(name)
        try:
            return np.asarray(self._files[self._where[name]].get_tensor(name))
        except Exception as e:  # noqa: BLE001 (a damaged file found only when read)
            raise ConfigError(f'{self._where[name]}: tensor {name} is not readable '
                              f'({first_line(e)})') from None

    def unread(self) -> list[str]:
        return sorted(set(self._where) - self.read)


def write_safetensors(path: str, tensors: dict[str, np.ndarray]):
    """Writes `tensors` (name -> numpy array, any float dtype incl. bfloat16) to `path`."""
    import jax.numpy as jnp
    from safetensors.flax import save_file

    save_file({k: jnp.asarray(v) for k, v in tensors.items()}, path, metadata={'format': 'pt'})


def write_model_dir(out: str, tensors: dict[str, np.ndarray], hf_config: dict,
                    tokenizer: str = '') -> str:
    """Writes a directory `from_pretrained` loads: model.safetensors, config.json (with the
    tensors' dtype), and `tokenizer` copied as tokenizer.json when it is a file. `out` must
    be new or empty (one-line ConfigError otherwise). Returns the dtype's name."""
    import shutil

    if os.path.exists(out) and os.listdir(out):
        raise ConfigError(f'--out {out}: exists and is not empty')
    dtype = str(next(iter(tensors.values())).dtype)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, SINGLE), tensors)
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(dict(hf_config, dtype=dtype, torch_dtype=dtype), f, indent=2, sort_keys=True)
    if tokenizer and os.path.isfile(tokenizer):
        shutil.copy(tokenizer, os.path.join(out, 'tokenizer.json'))
    return dtype


def write_workdir(workdir: str, config, params, tokenizer: str):
    """Writes config.json, tokenizer.json (with the chat template files beside it, when the
    source has them: jaxbig.data.text.chat) and checkpoint 0 into a temporary directory beside
    `workdir`, then moves them in: a failed import leaves nothing behind."""
    from jaxbig import checkpoint  # orbax: only an import needs it
    from jaxbig import config as config_lib

    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.jaxbig-import-', dir=parent)
    try:
        if os.path.isfile(tokenizer):
            from jaxbig.data.text import chat

            shutil.copy(tokenizer, os.path.join(tmp, TOKENIZER_FILE))
            chat.copy_beside(os.path.dirname(os.path.abspath(tokenizer)), tmp)
            config.data.tokenizer = os.path.join(os.path.abspath(workdir), TOKENIZER_FILE)
        with open(os.path.join(tmp, 'config.json'), 'w') as f:
            f.write(config_lib.to_json(config))
        saver = checkpoint.Checkpointer(tmp, keep=1, async_save=False)
        saver.save(0, {'params': params, 'step': np.int32(0)}, force=True)
        saver.wait()
        saver.close()
        if os.path.isdir(workdir):
            if os.listdir(workdir):
                raise ConfigError(f'--workdir {workdir}: exists and is not empty')
            os.rmdir(workdir)
        os.replace(tmp, workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
