"""`digits`: scikit-learn's bundled handwritten digits as a TFDS image dataset (offline).

1,797 real 8x8 grey-scale images of the digits 0-9 (UCI optical recognition of handwritten
digits, 4-bit intensities 0..16), shipped inside scikit-learn, so no download is needed.

Features: `image` uint8[8, 8, 1] (intensity * 255 / 16, rounded), `label` ClassLabel(10)
('0'..'9'), `index` int64 (row in `sklearn.datasets.load_digits`).
Split: a fixed stratified split, `test` = 20 % of each class (359 images: every 5th image of
each class in file order, starting with the 3rd), `train` = the other 1,438. Deterministic
and independent of any seed. Prepare with `jaxbig.data.image_sources.prepare(config)`.
"""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxbig.data.builders.pystdlib import _ClassProperty

TEST_EVERY = 5  # 1 in 5 images of each class goes to `test`.


def split_of_each_row(labels: np.ndarray) -> np.ndarray:
    """labels int[n] -> str[n] of 'train' / 'test': within each class, rank % 5 == 2 is test."""
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        ranks = np.arange(len(rows))
        out[rows] = np.where(ranks % TEST_EVERY == 2, 'test', 'train')
    return out


def load_arrays():
    """(images uint8[1797, 8, 8, 1], labels int64[1797]) from scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits; see the module docstring."""

    name = 'digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
    # As in pystdlib.py: TFDS would find these with `importlib_resources` (a TF dependency).
    pkg_dir_path = epath.Path(__file__).parent
    code_path = _ClassProperty(lambda cls: epath.Path(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='scikit-learn load_digits: 8x8 handwritten digits, 10 classes.',
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                    'index': tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {s: self._generate_examples(s) for s in ('train', 'test')}

    def _generate_examples(self, split: str):
        images, labels = load_arrays()
        splits = split_of_each_row(labels)
        for i in np.flatnonzero(splits == split):
            yield int(i), {'image': images[i], 'label': int(labels[i]), 'index': int(i)}
