"""Image data for contrastive training, no download:

* SimCLR augmentations: each image operation against NumPy / SciPy or a closed form; views
  are a pure function of (seed, batch index); host parts concatenate to the global batch;
* `data.image_size`: variable-size images (a fake TFDS dataset shaped like imagenet2012)
  become fixed-size training views and centre-cropped evaluation images;
* the embedded `digits` and `shapes` TFDS datasets: counts, determinism, and captions that
  name what was drawn; the caption tokenizers.
"""
import re

import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import tensorflow_datasets as tfds
from etils import epath

from jaxbig import config as config_lib
from jaxbig import data
from jaxbig.config import ConfigError
from jaxbig.data import augment, image_sources
from jaxbig.data.builders import digits, shapes
from jaxbig.data.text import captions

SHAPES_SMALL = dict(resolution=16, num_train=24, num_test=8, shapes_seed=0)
# (H, W) of the fake variable-size dataset's train images; several have a short side of 24,
# whose centre square resized to 12 x 12 is a 2 x 2 block mean (checked below).
VAR_SIZES = [(24, 30), (30, 24), (24, 24), (13, 17), (40, 24), (9, 11), (24, 28), (20, 15)]


class VarImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RGB images of different sizes with labels, like imagenet2012 (uint8 [H, W, 3]);
    unregistered, so the pipeline finds it only as prepared files in data_dir."""

    VERSION = tfds.core.Version('1.0.0')
    pkg_dir_path = epath.Path(__file__).parent
    code_path = None

    def _info(self):
        image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='zlib')
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
            {'image': image, 'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(VAR_SIZES, 0),
                'validation': self._generate_examples(VAR_SIZES[:4], 1)}

    def _generate_examples(self, sizes, seed):
        rng = np.random.default_rng(seed)
        for k, size in enumerate(sizes):
            yield k, {'image': rng.integers(0, 256, (*size, 3), dtype=np.uint8), 'label': k % 3}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tfds_image_data'))
    data.prepare(ml_collections.ConfigDict(dict(pipeline='views', name='digits', data_dir=path)))
    data.prepare(ml_collections.ConfigDict(
        dict(pipeline='image_text', name='shapes', data_dir=path, **SHAPES_SMALL)))
    VarImages(data_dir=path).download_and_prepare(file_format='array_record')
    return path


def views_config(data_dir, **overrides):
    cfg = dict(pipeline='views', name='digits', data_dir=data_dir, image_key='image',
               label_key='label', train_split='train', val_split='test', views=2,
               crop_min_scale=0.3, flip=True, jitter_strength=0.5, jitter_prob=0.8,
               grayscale_prob=0.2, blur_prob=0.5)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def pipeline(cfg, split='train', batch_size=6, seed=0, **kw):
    return data.build_pipeline(cfg, split=split, batch_size=batch_size, seed=seed, **kw)


# ----------------------------------------------------------------------------- augment ops

def test_crop_and_resize_closed_forms():
    images = np.random.default_rng(0).uniform(size=(2, 8, 6, 3)).astype(np.float32)
    whole = np.array([[0, 0, 8, 6]] * 2, np.float64)
    np.testing.assert_allclose(augment.crop_and_resize(images, whole), images, atol=1e-6)
    # A box on whole pixels resampled to its own size is the slice.
    box = np.array([[2, 1, 4, 3], [1, 3, 4, 3]], np.float64)
    out = augment.crop_and_resize(images, box, (4, 3))
    np.testing.assert_allclose(out[0], images[0, 2:6, 1:4], atol=1e-6)
    np.testing.assert_allclose(out[1], images[1, 1:5, 3:6], atol=1e-6)
    # Halving: every output pixel is the mean of a 2 x 2 block.
    half = augment.crop_and_resize(images, whole, (4, 3))
    blocks = images.reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(half, blocks, atol=1e-6)


def test_flip_jitter_grayscale_blur_match_numpy():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(3, 10, 10, 3)).astype(np.float32)
    flips = np.array([True, False, True])
    ref = np.stack([im[:, ::-1] if f else im for im, f in zip(images, flips)])
    np.testing.assert_array_equal(augment.flip_left_right(images, flips), ref)

    factors = np.array([[1.3, 0.6, 1.5], [0.7, 1.4, 0.2], [1.0, 1.0, 1.0]])
    luma = np.array([0.299, 0.587, 0.114])
    expected = []
    for im, (b, c, s) in zip(images.astype(np.float64), factors):
        x = np.clip(im * b, 0, 1)
        mean = (x @ luma).mean()
        x = np.clip(mean + (x - mean) * c, 0, 1)
        grey = (x @ luma)[..., None]
        expected.append(np.clip(grey + (x - grey) * s, 0, 1))
    np.testing.assert_allclose(augment.colour_jitter(images, factors), expected, atol=1e-5)
    np.testing.assert_allclose(augment.colour_jitter(images, factors)[2], images[2], atol=1e-6)

    gray = augment.to_grayscale(images, np.array([True, False, False]))
    np.testing.assert_allclose(gray[0], np.repeat((images[0] @ luma)[..., None], 3, -1),
                               atol=1e-6)
    np.testing.assert_array_equal(gray[1:], images[1:])

    sigma = np.array([0.0, 0.8, 1.7])
    blurred = augment.gaussian_blur(images, sigma)
    radius = int(np.ceil(0.05 * 10))
    np.testing.assert_allclose(blurred[0], images[0], atol=1e-6)
    for b in (1, 2):  # numpy 'reflect' padding = scipy 'mirror'
        ref = scipy.ndimage.gaussian_filter(images[b].astype(np.float64), (sigma[b], sigma[b], 0),
                                            mode='mirror', radius=(radius, radius, 0))
        np.testing.assert_allclose(blurred[b], ref, atol=1e-5)


def test_crop_boxes_inside_image_with_area_in_range():
    rng = np.random.default_rng(0)
    boxes = np.array([augment.random_crop_boxes(rng, 30, 20, 0.3) for _ in range(500)])
    y0, x0, h, w = boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= 30 + 1e-9).all()
    assert (x0 + w <= 20 + 1e-9).all()
    area = h * w / 600
    assert area.min() >= 0.3 - 1e-9 and area.max() <= 1 + 1e-9
    assert area.std() > 0.1  # really random


# ----------------------------------------------------------------------------- views pipeline

def test_views_are_pure_seeded_and_distinct(data_dir):
    cfg = views_config(data_dir)
    a = pipeline(cfg, seed=0).get_batch(3)
    b = pipeline(cfg, seed=0).get_batch(3)  # a fresh pipeline: nothing carried over
    assert set(a) == {'view1', 'view2', 'label'}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for k in ('view1', 'view2'):
        assert a[k].shape == (6, 8, 8, 1) and a[k].dtype == np.float32
        assert a[k].min() >= -1 and a[k].max() <= 1 and a[k].std() > 0.1
    assert a['label'].dtype == np.int32 and a['label'].shape == (6,)
    # The two views of each example differ, and so do other seeds and other batches.
    assert all(not np.allclose(v1, v2) for v1, v2 in zip(a['view1'], a['view2']))
    assert not np.allclose(pipeline(cfg, seed=1).get_batch(3)['view1'], a['view1'])
    assert not np.allclose(pipeline(cfg, seed=0).get_batch(4)['view1'], a['view1'])


def test_views_of_an_example_depend_only_on_seed_batch_and_row(data_dir):
    """The same example at the same stream position gets the same views whatever else is in
    the batch: rows of a batch of 6 equal those of the two host halves of it."""
    cfg = views_config(data_dir)
    whole = pipeline(cfg, seed=5).get_batch(2)
    halves = [pipeline(cfg, seed=5, process_index=p, process_count=2).get_batch(2)
              for p in (0, 1)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
    with pytest.raises(ValueError, match='multiple of process_count=4'):
        pipeline(cfg, process_index=0, process_count=4)


def test_plain_images_are_the_stored_pixels(data_dir):
    pipe = pipeline(views_config(data_dir, views=0), split='test', batch_size=5)
    batch = pipe.get_batch(1)
    assert set(batch) == {'image', 'label'}
    images, labels = digits.load_arrays()
    test_rows = np.flatnonzero(digits.split_of_each_row(labels) == 'test')
    rows = test_rows[pipe.order.ids(np.arange(5, 10))]
    np.testing.assert_allclose(batch['image'], images[rows] / 255.0 * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(batch['label'], labels[rows])


# ----------------------------------------------------------------------------- image_size

def test_variable_size_images_need_image_size(data_dir):
    cfg = views_config(data_dir, name='var_images', val_split='validation')
    with pytest.raises(ConfigError, match=r'data.image_size=0 .* different sizes.*'
                                          r'--config.data.image_size='):
        pipeline(cfg, batch_size=4).get_batch(0)
    with pytest.raises(ConfigError, match='data.image_size=-3'):
        pipeline(views_config(data_dir, name='var_images', image_size=-3))


def test_variable_size_images_to_fixed_size_views(data_dir):
    cfg = views_config(data_dir, name='var_images', val_split='validation', image_size=12)
    batch = pipeline(cfg, batch_size=4, seed=2).get_batch(1)
    for k in ('view1', 'view2'):
        assert batch[k].shape == (4, 12, 12, 3) and batch[k].dtype == np.float32
        assert batch[k].min() >= -1 and batch[k].max() <= 1
    assert not np.allclose(batch['view1'], batch['view2'])
    again = pipeline(cfg, batch_size=4, seed=2).get_batch(1)
    halves = [pipeline(cfg, batch_size=4, seed=2, process_index=p, process_count=2).get_batch(1)
              for p in (0, 1)]
    for k in batch:
        np.testing.assert_array_equal(again[k], batch[k])
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), batch[k])


def test_variable_size_images_centre_crop_for_evaluation(data_dir):
    cfg = views_config(data_dir, name='var_images', views=0, image_size=12)
    pipe = pipeline(cfg, batch_size=8)
    batch = pipe.get_batch(0)
    assert batch['image'].shape == (8, 12, 12, 3)
    ids = pipe.order.ids(np.arange(8))
    stored = pipe.split.read(ids)['image']
    checked = 0
    for image, out in zip(stored, batch['image']):
        h, w, _ = image.shape
        if min(h, w) != 24:
            continue
        y0, x0 = (h - 24) // 2, (w - 24) // 2  # (h - 24) is even for these sizes
        crop = image[y0:y0 + 24, x0:x0 + 24].astype(np.float64) / 255
        ref = crop.reshape(12, 2, 12, 2, 3).mean(axis=(1, 3)) * 2 - 1
        np.testing.assert_allclose(out, ref, atol=1e-5)
        checked += 1
    assert checked == 5


def test_simclr_config_wires_image_size(data_dir):
    small = config_lib.load('experiments/simclr.py:data=digits')
    assert small.data.image_size == 0 and small.model.backbone.stem == 'small'
    big = config_lib.load('experiments/simclr.py:data=var_images,image_size=96')
    assert big.data.image_size == 96 and big.model.backbone.stem == 'imagenet'
    vit = config_lib.load('experiments/simclr.py:data=var_images,image_size=224,backbone=vit')
    assert vit.model.backbone.patch_size == 16
    with pytest.raises(ConfigError, match='image_size=-1'):
        config_lib.load('experiments/simclr.py:image_size=-1')
    cfg = config_lib.load('experiments/simclr.py:data=var_images,image_size=16')
    cfg.data.data_dir, cfg.data.val_split = data_dir, 'validation'
    batch = pipeline(cfg.data, batch_size=4).get_batch(0)
    assert batch['view1'].shape == batch['view2'].shape == (4, 16, 16, 3)


# ----------------------------------------------------------------------------- digits

def test_digits_builder_counts_and_pixels(data_dir):
    builder = image_sources.builder(ml_collections.ConfigDict(dict(name='digits',
                                                                   data_dir=data_dir)))
    assert builder.info.splits['train'].num_examples == 1438
    assert builder.info.splits['test'].num_examples == 359
    images, labels = digits.load_arrays()
    seen = []
    for split in ('train', 'test'):
        source = builder.as_data_source(split=split)
        index = np.array([source[i]['index'] for i in range(len(source))])
        seen.append(index)
        for i in (0, 7, len(source) - 1):
            np.testing.assert_array_equal(source[i]['image'], images[index[i]])
            assert source[i]['label'] == labels[index[i]]
        assert np.all(index[1:] > index[:-1])  # file order
    assert not set(seen[0]) & set(seen[1]) and len(np.union1d(*seen)) == 1797
    per_class = np.bincount(labels[seen[1]], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.02), per_class  # stratified 20 %
    assert images.dtype == np.uint8 and images.max() == 255 and images.shape == (1797, 8, 8, 1)


# ----------------------------------------------------------------------------- shapes

CAPTION = re.compile(r'^a (small|large) (\w+) (\w+) ((?:at|on|in) the [a-z ]+)$')


def measured_attributes(image: np.ndarray, resolution: int) -> dict:
    """Reads colour, shape, size and position back from the pixels alone."""
    mask = image.max(-1) >= 120  # the background stays below ~90
    ys, xs = np.nonzero(mask)
    rgb = image[mask].mean(0)
    colour = min(shapes.COLOURS, key=lambda c: np.abs(np.array(shapes.COLOURS[c]) - rgb).sum())
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    fill = mask.sum() / (height * width)  # of the bounding box
    lower = np.mean(ys > (ys.min() + ys.max()) / 2)  # mass in the lower half
    if fill > 0.95:
        shape = 'square'
    elif fill > 0.655:
        shape = 'circle'
    else:
        shape = 'triangle' if lower > 0.6 else 'diamond'
    area_per_r2 = {'circle': np.pi, 'square': 1.7**2, 'triangle': 1.8 * 1.08,
                   'diamond': 2 * 1.15**2}[shape]
    radius = np.sqrt(mask.sum() / area_per_r2) / resolution
    size = 'small' if radius < 0.117 else 'large'  # between 0.09 * 1.1 and 0.15 * 0.9
    cell = resolution / 3
    row, col = int((ys.mean() + 0.5) // cell), int((xs.mean() + 0.5) // cell)
    return dict(colour=colour, shape=shape, size=size, position=shapes.POSITIONS[3 * row + col])


def test_shapes_captions_name_what_is_drawn():
    for k in range(80):
        ex = shapes.draw_example(3, 'train', k, 64)
        match = CAPTION.match(ex['caption'])
        assert match, ex['caption']
        size, colour, shape, position = match.groups()
        names = dict(colour=colour, shape=shape, size=size, position=position)
        assert names == dict(colour=list(shapes.COLOURS)[ex['colour']],
                             shape=shapes.SHAPES[ex['shape']],
                             size=list(shapes.SIZES)[ex['size']],
                             position=shapes.POSITIONS[ex['position']]), ex['caption']
        assert shapes.CLASS_NAMES[ex['label']] == f'{colour} {shape}'
        assert measured_attributes(ex['image'], 64) == names, (k, ex['caption'])


def test_shapes_deterministic_from_the_seed():
    a, b = (shapes.draw_example(0, 'train', 5, 16) for _ in range(2))
    np.testing.assert_array_equal(a['image'], b['image'])
    assert a['caption'] == b['caption']
    others = [shapes.draw_example(1, 'train', 5, 16), shapes.draw_example(0, 'test', 5, 16),
              shapes.draw_example(0, 'train', 6, 16)]
    assert all(not np.array_equal(o['image'], a['image']) for o in others)
    assert shapes.draw_example(0, 'train', 5, 32)['caption'] == a['caption']  # any resolution
    captions_ = {shapes.draw_example(0, 'train', k, 8)['caption'] for k in range(400)}
    assert len(captions_) > 250  # factors drawn independently: most of the 432 appear


def test_shapes_builder_counts_and_examples(data_dir):
    cfg = ml_collections.ConfigDict(dict(name='shapes', data_dir=data_dir, **SHAPES_SMALL))
    builder = image_sources.builder(cfg)
    assert builder.info.splits['train'].num_examples == 24
    assert builder.info.splits['test'].num_examples == 8
    assert builder.info.features['label'].names == list(shapes.CLASS_NAMES)
    for split, n in (('train', 24), ('test', 8)):
        source = builder.as_data_source(split=split)
        for k in (0, n - 1):
            ref = shapes.draw_example(0, split, k, 16)
            np.testing.assert_array_equal(source[k]['image'], ref['image'])
            caption = source[k]['caption']
            assert (caption.decode() if isinstance(caption, bytes) else caption) == ref['caption']
            assert source[k]['label'] == ref['label']


# ----------------------------------------------------------------------------- tokenizers

def test_word_tokenizer_round_trip_eos_and_padding():
    tok = captions.WordTokenizer()
    every = [shapes.caption(c, s, z, p) for c in shapes.COLOURS for s in shapes.SHAPES
             for z in shapes.SIZES for p in shapes.POSITIONS]
    assert len(set(every)) == 432
    ids = tok.encode_batch(every, 10)
    assert ids.shape == (432, 10) and ids.dtype == np.int32
    assert not (ids == tok.unk_id).any()  # the vocabulary covers the grammar
    for text, row in zip(every, ids):
        n = len(text.split())
        assert tok.decode(row) == text
        assert row[n] == tok.eos_id and (row[:n] >= 3).all() and (row[n + 1:] == tok.pad_id).all()
    assert tok.encode('A Small RED circle', 6).tolist()[4:] == [tok.eos_id, tok.pad_id]
    assert tok.decode(tok.encode('A Small RED circle', 6)) == 'a small red circle'
    short = tok.encode(every[0], 4)  # truncated to 3 words: the eos always fits
    assert short[-1] == tok.eos_id and tok.decode(short) == ' '.join(every[0].split()[:3])
    unknown = tok.encode('a blue hexagon', 5)
    assert unknown[2] == tok.unk_id and tok.decode(unknown) == 'a blue'
    assert tok.encode_batch([], 7).shape == (0, 7)
    assert tok.vocab_size == 3 + len(captions.shapes_words())


def test_byte_caption_tokenizer_and_errors():
    tok = captions.get_tokenizer('bytes')
    text = 'Ein Café — 日本'
    ids = tok.encode(text, 40)
    n = len(text.encode())
    assert ids[n] == tok.eos_id and (ids[n + 1:] == tok.pad_id).all() and ids[:n].min() >= 2
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode('abcdef', 4)) == 'abc'
    with pytest.raises(ValueError, match=r"data.tokenizer='wordpiece'"):
        captions.get_tokenizer('wordpiece')
