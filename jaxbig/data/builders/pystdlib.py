"""`pystdlib`: the running Python's standard library source as a TFDS text dataset.

Always available offline (no downloads): examples are the `.py` files under
`sysconfig.get_paths()['stdlib']`, excluding `site-packages/` and `__pycache__/`;
the whole tree is included, `test/` directories too (on CPython 3.11: 1790 files,
31.5 MB; prepare takes ~1 s on 2 cores). The 4 files that are not valid UTF-8
(encoding tests under `test/`) and any containing NUL bytes (NUL is the tokenizer's
document separator) are skipped. The prepared data reflects the Python that ran
`prepare`; delete `<data_dir>/pystdlib` to rebuild it after changing interpreters.

Features: `text` (Text, the file's source) and `path` (Text, path relative to the
stdlib root with '/' separators). Files are generated in sorted path order and
stored in that order (`disable_shuffling`). Split by a stable hash of the relative
path: ~5% `validation`, the rest `train` (see `split_for_path`).

Prepare with `jaxbig.data.prepare(config)`, which calls
`Pystdlib(data_dir=...).download_and_prepare(file_format='array_record')`.
"""

import hashlib
import os
import sysconfig
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

VALIDATION_FRACTION = 20  # 1 in 20 paths (~5%) goes to validation.


def split_for_path(relpath: str) -> str:
    """Stable split of a '/'-separated relative path: 'validation' (~5%) or 'train'."""
    h = int(hashlib.md5(relpath.encode('utf-8')).hexdigest()[:8], 16)
    return 'validation' if h % VALIDATION_FRACTION == 0 else 'train'


def read_text(path: str) -> str | None:
    """File contents as str, or None if not UTF-8 or containing NUL bytes."""
    with open(path, 'rb') as f:
        raw = f.read()
    if b'\x00' in raw:
        return None
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        return None


def walk_files(
    root: str, *, suffix: str = '', exclude_dirs=(), skip_hidden: bool = False
) -> list[str]:
    """Sorted '/'-separated paths (relative to `root`) of files ending in `suffix`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in exclude_dirs and not (skip_hidden and d.startswith('.'))
        ]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.endswith(suffix) and not (skip_hidden and name.startswith('.')):
                rel = name if rel_dir == '.' else os.path.join(rel_dir, name)
                out.append(rel.replace(os.sep, '/'))
    return sorted(out)


def stdlib_root() -> str:
    return sysconfig.get_paths()['stdlib']


class _ClassProperty:
    def __init__(self, fget):
        self._fget = fget

    def __get__(self, obj, cls):
        return self._fget(cls)


class Pystdlib(tfds.core.GeneratorBasedBuilder):
    """The Python standard library's `.py` files; see the module docstring."""

    name = 'pystdlib'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
    # TFDS 4.9.10 infers these via `importlib_resources`, which is not installed
    # (only a dependency of TF); this module's own location is what it would find.
    pkg_dir_path = epath.Path(__file__).parent
    code_path = _ClassProperty(lambda cls: epath.Path(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='Python standard library source files (.py).',
            features=tfds.features.FeaturesDict(
                {
                    'text': tfds.features.Text(),
                    'path': tfds.features.Text(),
                }
            ),
            homepage='https://docs.python.org/3/library/',
            disable_shuffling=True,  # store records in sorted path order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {s: self._generate_examples(s) for s in ('train', 'validation')}

    def _generate_examples(self, split: str):
        root = stdlib_root()
        for rel in walk_files(root, suffix='.py', exclude_dirs=('site-packages', '__pycache__')):
            if split_for_path(rel) != split:
                continue
            text = read_text(os.path.join(root, rel))
            if text is not None:
                yield rel, {'text': text, 'path': rel}
