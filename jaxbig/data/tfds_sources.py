"""Opening TFDS datasets as users have prepared them: the data dir, the builder, its splits.

    resolve_data_dir(data_dir)        '' -> TFDS's default data dir; '~' expanded
    open_builder(name, data_dir)      a prepared builder that supports random access, or one
                                      line saying what is wrong and the command that fixes it
    find_split(builder, split)        the stored split to read for `split`: itself, or, for an
                                      evaluation split the dataset lacks ('validation' of
                                      lm1b, 'test' of imagenet2012), the one it has
    data_source(builder, split)       `builder.as_data_source(split)` of the found split

jaxbig reads TFDS with `as_data_source` (random access, numpy items, no TensorFlow), which
needs `array_record` files; TFDS's default file format is tfrecord, so a dataset prepared
with a plain `tfds build` gets an error naming both ways to get array_record files.
"""

from __future__ import annotations

import logging
import os
import re

import tensorflow_datasets as tfds

EVAL_SPLITS = ('validation', 'val', 'test')  # names of held-out splits, in order of preference


def resolve_data_dir(data_dir: str) -> str:
    """'' -> TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets); expands '~'."""
    default = tfds.core.constants.get_default_data_dir() or '~/tensorflow_datasets'
    return os.path.abspath(os.path.expanduser(data_dir or default))


def not_prepared(name: str, data_dir: str) -> ValueError:
    return ValueError(
        f'data.name={name!r}: TFDS dataset not prepared in data_dir {data_dir!r}; '
        f'prepare it on a machine with internet: `tfds build {name} --data_dir '
        f'{data_dir} --file_format=array_record` (then copy that directory here).'
    )


def not_random_access(builder, name: str, data_dir: str) -> ValueError:
    formats = sorted(f.value for f in builder.info.available_file_formats()) or ['unknown']
    return ValueError(
        f'data.name={name!r}: prepared in {os.fspath(builder.data_dir)!r} as '
        f'{"/".join(formats)} (TFDS\'s default file format), but jaxbig reads array_record '
        '(random access, no TensorFlow); convert it where TensorFlow is installed: `tfds '
        f'convert_format --dataset_version_dir={os.fspath(builder.data_dir)} '
        f'--out_file_format=array_record`, or rebuild it: `tfds build {name} --data_dir '
        f'{data_dir} --file_format=array_record`'
    )


def check_random_access(builder, name: str, data_dir: str):
    """`builder` if some prepared file format of it has random access, else raises."""
    random_access = set(tfds.core.file_adapters.FileFormat.with_random_access())
    if not random_access & set(builder.info.available_file_formats()):
        raise not_random_access(builder, name, data_dir)
    return builder


def open_builder(name: str, data_dir: str):
    """The prepared TFDS builder `name` in `data_dir` (array_record); ValueError if not."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # unknown name, missing files, catalog import errors...
        raise not_prepared(name, data_dir) from e
    if not prepared:
        raise not_prepared(name, data_dir)
    return check_random_access(builder, name, data_dir)


def find_split(builder, split: str, name: str = '') -> str:
    """The split to read for `split` (a split name or a TFDS split spec like 'train[:90%]').

    Present: itself. An evaluation split (EVAL_SPLITS) the dataset lacks: the first of
    EVAL_SPLITS it has (logged). Else ValueError naming the splits it has."""
    available = list(builder.info.splits)
    base = re.split(r'[\[+|]', split, maxsplit=1)[0]
    if base in available:
        return split
    if split in EVAL_SPLITS:
        found = next((s for s in EVAL_SPLITS if s in available), None)
        if found is not None:
            logging.info('data: %r has no split %r; evaluating on %r', name or builder.name,
                         split, found)
            return found
    raise ValueError(
        f'data split {split!r} not available for {name or builder.name!r} (splits: '
        f'{sorted(available)}); set data.train_split / data.val_split (or the evaluator\'s '
        'split) to one of them'
    )


def data_source(builder, split: str, name: str = ''):
    """(random-access source, the stored split it reads) for `split` of `builder`."""
    found = find_split(builder, split, name)
    check_random_access(builder, name or builder.name, os.fspath(builder.data_dir))
    try:
        return builder.as_data_source(split=found), found
    except Exception as e:
        raise ValueError(f'data split {found!r} of {name or builder.name!r} cannot be read: '
                         f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
                         ) from e
