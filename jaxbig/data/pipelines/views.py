"""Image pipeline for self-supervised training: each example -> `views` augmented views.

`config.pipeline = 'views'`. Batches (b = batch_size // process_count host rows):

    views >= 1:  view1 .. view{views} float32 [b, H, W, C] in [-1, 1], label int32 [b]
    views == 0:  image float32 [b, H, W, C] in [-1, 1] (no augmentation), label int32 [b]

(evaluators ask for plain images by setting `views=0` on a copy of the data config).
Global batch i holds stream positions i*B .. i*B+B-1; epoch e visits every example in a
seeded shuffle (`image_sources.IndexOrder`); the augmentation of position g in batch i draws
from `augment.example_rng(seed, i, g)`. So batch i is a pure function of (seed, i), however
many hosts share it. `one_pass=True` (evaluators) visits each example of the split once
and adds `example_mask` (`jaxbig.data.one_pass`).

Image size: image_size = 0 keeps the stored H, W (every image must have the same size);
image_size = S gives S x S from images of any (also varying) size, as imagenet2012 needs:
each training view's random resized crop is resampled straight to S x S, and plain images
(views=0, evaluation) are centre-cropped to a square and resized to S x S.

Data config keys: name ('digits' embedded | any prepared TFDS image dataset, e.g. cifar10,
imagenet2012), data_dir, image_key, label_key, train_split, val_split, views, image_size,
folds (`jaxbig.data.folds`), label_fraction / label_seed (`jaxbig.data.label_subset`: a
stratified fraction of the training labels), and the augmentation
(`augment.AugmentConfig` fields): crop_min_scale, flip, jitter_strength, jitter_prob,
grayscale_prob, blur_prob.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data import augment, image_sources
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.pipelines.image_text import square_resize


def prepare(config) -> None:
    image_sources.prepare(config)


def augment_config(config) -> augment.AugmentConfig:
    fields = {f.name for f in dataclasses.fields(augment.AugmentConfig)}
    return augment.AugmentConfig(**{k: config[k] for k in fields if k in config})


class ViewsPipeline:
    """See the module docstring. get_batch(i) -> dict of numpy arrays with b rows."""

    def __init__(self, config, *, split, batch_size, seed, process_index=0, process_count=1,
                 one_pass=False, num_examples=0):
        self.image_key = config.get('image_key', 'image')
        self.label_key = config.get('label_key', 'label')
        keys = (self.image_key, self.label_key) if self.label_key else (self.image_key,)
        self.split = image_sources.load_split(config, split, keys)
        self.rows = image_sources.ExampleRows(
            len(self.split), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        self.order = self.rows.order
        one_pass_lib.attach(self, self.rows.one_pass)
        self.num_views = config.get('views', 2)
        self.augment = augment_config(config)
        self.image_size = config.get('image_size', 0)
        if not isinstance(self.image_size, int) or self.image_size < 0:
            raise ConfigError(
                f'data.image_size={self.image_size!r}: expected 0 (as stored) or a size in pixels'
            )
        self.name = config.get('name', '')
        self.seed = int(seed)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        rows, ids, example_mask = self.rows.batch(i)
        columns = self.split.read(ids)
        images = self._images(columns[self.image_key])
        out = one_pass_lib.with_mask({}, example_mask)
        if self.label_key:
            out['label'] = columns[self.label_key].astype(np.int32)
        if self.num_views == 0:
            if self.image_size:
                images = np.stack([square_resize(x, self.image_size) for x in images])
            out['image'] = images * 2.0 - 1.0
            return out
        rngs = [augment.example_rng(self.seed, i, g) for g in rows]
        size = (self.image_size, self.image_size) if self.image_size else None
        views = augment.simclr_views(images, rngs, self.augment, self.num_views, size)
        for k, view in enumerate(views):
            out[f'view{k + 1}'] = view * 2.0 - 1.0
        return out

    def _images(self, column):
        """uint8 images -> float32 in [0, 1]: [b, H, W, C], or a list of b [H_i, W_i, C]
        when image_size is set (they are resized later)."""
        if self.image_size:
            return [np.asarray(x, np.float32) / 255.0 for x in column]
        if column.dtype == object:
            sizes = sorted({np.shape(x) for x in column})
            raise ConfigError(
                f'data.image_size=0 but data.name={self.name!r} has images of different sizes '
                f'{sizes[:3]}; set data.image_size (e.g. --config.data.image_size=224) to crop '
                'and resize them to one size'
            )
        return column.astype(np.float32) / 255.0


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    return ViewsPipeline(config, split=split, batch_size=batch_size, seed=seed,
                         process_index=process_index, process_count=process_count,
                         one_pass=one_pass, num_examples=num_examples)
