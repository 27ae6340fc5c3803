"""Image-text pairs for contrastive image-text training (CLIP / SigLIP).

`config.pipeline = 'image_text'`. Batches (b = batch_size // process_count host rows):

    image  float32 [b, R, R, C] in [-1, 1]
    text   int32 [b, max_len]   caption tokens, eos then pad (`captions.get_tokenizer`)
    label  int32 [b]            class id (when data.label_key is set; used by zero-shot)

Global batch i holds stream positions i*B .. i*B+B-1 of endless seeded-shuffle epochs
(`image_sources.IndexOrder`), so it is a pure function of (seed, i); `one_pass=True`
(evaluators) visits each pair once and adds `example_mask` (`jaxbig.data.one_pass`). No
augmentation: the
shapes captions name position (left/right, top/bottom), which crops and flips would falsify.

Data config keys: name ('shapes' embedded, with resolution, num_train, num_test,
shapes_seed | a prepared TFDS dataset such as coco_captions with text_key='captions/text',
label_key='', tokenizer='bytes', image_size=...), data_dir, image_key, text_key, label_key,
tokenizer ('words' | 'bytes' | a tokenizer.json path: an imported CLIP's own, with eos_id
its text tower's pooling id, -1 = the file's eos; `captions.FileCaptionTokenizer`), max_len,
image_size (0 = as stored; else images are
centre-cropped to a square and resized to image_size), train_split, val_split.
"""

from __future__ import annotations

import numpy as np

from jaxbig.data import augment, image_sources
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.text import captions


def prepare(config) -> None:
    image_sources.prepare(config)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] -> float32 [size, size, C]: centre square crop, bilinear resize."""
    h, w = image.shape[:2]
    side = min(h, w)
    box = np.array([[(h - side) / 2, (w - side) / 2, side, side]])
    return augment.crop_and_resize(image[None], box, (size, size))[0]


class ImageTextPipeline:
    """See the module docstring. get_batch(i) -> dict(image, text[, label])."""

    def __init__(self, config, *, split, batch_size, seed, process_index=0, process_count=1,
                 one_pass=False, num_examples=0):
        self.image_key = config.get('image_key', 'image')
        self.text_key = config.get('text_key', 'caption')
        self.label_key = config.get('label_key', 'label')
        keys = (self.image_key, self.text_key) + ((self.label_key,) if self.label_key else ())
        self.split = image_sources.load_split(config, split, keys)
        self.tokenizer = captions.get_tokenizer(config.get('tokenizer', 'words'),
                                                config.get('eos_id', -1))
        self.max_len = config.get('max_len', 12)
        self.image_size = config.get('image_size', 0)
        self.rows = image_sources.ExampleRows(
            len(self.split), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        self.order = self.rows.order
        one_pass_lib.attach(self, self.rows.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        _, ids, example_mask = self.rows.batch(i)
        columns = self.split.read(ids)
        images = columns[self.image_key]
        if self.image_size:
            images = np.stack([square_resize(x, self.image_size) for x in images])
        out = {
            'image': images.astype(np.float32) / 127.5 - 1.0,
            'text': self.tokenizer.encode_batch(list(columns[self.text_key]), self.max_len),
        }
        if self.label_key:
            out['label'] = columns[self.label_key].astype(np.int32)
        return one_pass_lib.with_mask(out, example_mask)


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    return ImageTextPipeline(config, split=split, batch_size=batch_size, seed=seed,
                             process_index=process_index, process_count=process_count,
                             one_pass=one_pass, num_examples=num_examples)
