"""Image pipeline for self-supervised training: each example -> `views` augmented views.

`config.pipeline = 'views'`. Batches (b = batch_size // process_count host rows):

    views >= 1:  view1 .. view{views} float32 [b, H, W, C] in [-1, 1], label int32 [b]
    views == 0:  image float32 [b, H, W, C] in [-1, 1] (no augmentation), label int32 [b]

(evaluators ask for plain images by setting `views=0` on a copy of the data config).
Global batch i holds stream positions i*B .. i*B+B-1; epoch e visits every example in a
seeded shuffle (`image_sources.IndexOrder`); the augmentation of position g in batch i draws
from `augment.example_rng(seed, i, g)`. So batch i is a pure function of (seed, i), however
many hosts share it.

Data config keys: name ('digits' embedded | any prepared TFDS image dataset, e.g. cifar10),
data_dir, image_key, label_key, train_split, val_split, views, and the augmentation
(`augment.AugmentConfig` fields): crop_min_scale, flip, jitter_strength, jitter_prob,
grayscale_prob, blur_prob.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbig.data import augment, image_sources


def prepare(config) -> None:
    image_sources.prepare(config)


def augment_config(config) -> augment.AugmentConfig:
    fields = {f.name for f in dataclasses.fields(augment.AugmentConfig)}
    return augment.AugmentConfig(**{k: config[k] for k in fields if k in config})


class ViewsPipeline:
    """See the module docstring. get_batch(i) -> dict of numpy arrays with b rows."""

    def __init__(self, config, *, split, batch_size, seed, process_index=0, process_count=1):
        self.image_key = config.get('image_key', 'image')
        self.label_key = config.get('label_key', 'label')
        keys = (self.image_key, self.label_key) if self.label_key else (self.image_key,)
        self.split = image_sources.load_split(config, split, keys)
        self.order = image_sources.IndexOrder(len(self.split), seed)
        self.num_views = config.get('views', 2)
        self.augment = augment_config(config)
        self.seed, self.batch_size = int(seed), batch_size
        self.process_index, self.process_count = process_index, process_count
        image_sources.host_rows(0, batch_size, process_index, process_count)  # validates

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        rows = image_sources.host_rows(i, self.batch_size, self.process_index, self.process_count)
        columns = self.split.read(self.order.ids(rows))
        images = columns[self.image_key].astype(np.float32) / 255.0
        out = {}
        if self.label_key:
            out['label'] = columns[self.label_key].astype(np.int32)
        if self.num_views == 0:
            out['image'] = images * 2.0 - 1.0
            return out
        rngs = [augment.example_rng(self.seed, i, g) for g in rows]
        for k, view in enumerate(augment.simclr_views(images, rngs, self.augment, self.num_views)):
            out[f'view{k + 1}'] = view * 2.0 - 1.0
        return out


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1):
    return ViewsPipeline(
        config,
        split=split,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
