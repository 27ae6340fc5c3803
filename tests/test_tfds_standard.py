"""Standard TFDS datasets as users have them, each a small builder written here with the
features of the real one (nothing downloaded): PNG-encoded `Image` features (mnist 28x28x1,
cifar10 32x32x3, imagenet-like varying sizes with only train/validation, coco_captions-like
images with caption sequences) through SimCLR, image fine-tuning and CLIP; an lm1b-like
text set with splits train/test only through the LM; imdb_reviews- and ag_news-shaped text
classification through experiments/finetune_text.py; a dataset prepared as tfrecord (TFDS's
default) refused in one line that gives the command to convert it."""
import io
import json
import os
import shutil
from typing import ClassVar

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY_LM, metric_series, run_cli
from etils import epath

from jaxbig import cli, data
from jaxbig.data import image_sources, tfds_sources
from jaxbig.data.pipelines import text_classes

CIFAR = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
         'truck']
AG_NEWS = ['World', 'Sports', 'Business', 'Sci/Tech']


def png(image: np.ndarray) -> bytes:
    import PIL.Image

    out = io.BytesIO()
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, 'PNG')
    return out.getvalue()


def digit_image(label: int, rng, size=(28, 28), channels=1) -> np.ndarray:
    """A noisy image whose bright square's position encodes `label` (learnable)."""
    h, w = size
    image = rng.integers(0, 60, (h, w, channels), dtype=np.uint8)
    y, x = (label // 5) * h // 2, (label % 5) * w // 5
    image[y : y + h // 2, x : x + max(w // 5, 1)] = 230
    return image


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Found later by name only, through its prepared files (as a user's datasets are)."""

    VERSION = tfds.core.Version('1.0.0')
    pkg_dir_path = epath.Path(__file__).parent
    code_path = None
    SPLITS: ClassVar[dict] = {'train': 160, 'test': 64}

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s, n) for s, n in self.SPLITS.items()}

    def _generate_examples(self, split, n):
        rng = np.random.default_rng(list(self.SPLITS).index(split))
        for k in range(n):
            yield k, self.example(k, rng)


class MnistLike(_Builder):
    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=('image', 'label'), disable_shuffling=True)  # rows in k order

    def example(self, k, rng):
        return {'image': png(digit_image(k % 10, rng)), 'label': k % 10}


class Cifar10Like(_Builder):
    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'image': tfds.features.Image(shape=(32, 32, 3)),
            'label': tfds.features.ClassLabel(names=CIFAR)}),
            supervised_keys=('image', 'label'), disable_shuffling=True)

    def example(self, k, rng):
        return {'id': f'train_{k:05d}', 'image': png(digit_image(k % 10, rng, (32, 32), 3)),
                'label': k % 10}


class ImagenetLike(_Builder):
    """Images of varying sizes (JPEG in the real set; PNG here); train/validation only."""

    SPLITS: ClassVar[dict] = {'train': 160, 'validation': 64}

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'file_name': tfds.features.Text(),
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=('image', 'label'))

    def example(self, k, rng):
        size = tuple(int(s) for s in rng.integers(20, 41, 2))
        return {'file_name': f'n{k:08d}.JPEG', 'image': png(digit_image(k % 10, rng, size, 3)),
                'label': k % 10}


class CocoLike(_Builder):
    """coco_captions' features that CLIP reads: images of varying sizes, 5 captions each."""

    SPLITS: ClassVar[dict] = {'train': 96, 'val': 32}
    WORDS = ('top', 'bottom')

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image/id': np.int64,
            'captions': tfds.features.Sequence({'id': np.int64, 'text': tfds.features.Text()}),
        }))

    def example(self, k, rng):
        label = k % 10
        size = tuple(int(s) for s in rng.integers(24, 41, 2))
        text = f'a bright square at the {self.WORDS[label // 5]}, column {label % 5}'
        return {'image': png(digit_image(label, rng, size, 3)), 'image/id': k,
                'captions': {'id': list(range(5 * k, 5 * k + 5)), 'text': [text] * 5}}


def review(label: int, rng) -> str:
    words = (['awful', 'boring', 'bad'], ['great', 'moving', 'good'])[label]
    filler = ['the', 'film', 'was', 'and', 'plot', 'actors', 'a']
    return ' '.join(rng.choice(filler + words * 2, int(rng.integers(8, 40)))) + '.'


class ImdbLike(_Builder):
    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=['neg', 'pos'])}),
            supervised_keys=('text', 'label'))

    def example(self, k, rng):
        return {'text': review(k % 2, rng), 'label': k % 2}


class AgNewsLike(_Builder):
    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'description': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=AG_NEWS),
            'title': tfds.features.Text()}),
            supervised_keys=('description', 'label'))

    def example(self, k, rng):
        topic = AG_NEWS[k % 4].lower()
        return {'description': f'{topic} news item {int(rng.integers(1000))} about {topic}',
                'label': k % 4, 'title': f'{topic.upper()} today'}


class Lm1bLike(_Builder):
    """lm1b's shape: one `text` feature, splits train and test (no validation)."""

    SPLITS: ClassVar[dict] = {'train': 400, 'test': 40}

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'text': tfds.features.Text()}))

    def example(self, k, rng):
        return {'text': review(k % 2, rng)}


BUILDERS = {'mnist_like': MnistLike, 'cifar10_like': Cifar10Like,
            'imagenet_like': ImagenetLike, 'coco_like': CocoLike, 'imdb_like': ImdbLike,
            'ag_news_like': AgNewsLike, 'lm1b_like': Lm1bLike}


@pytest.fixture(scope='module')
def tfds_data(tmp_path_factory):
    """Every builder prepared as array_record in one data dir, exported as TFDS_DATA_DIR
    (the CLI subprocesses find them there), and a tfrecord-format copy of imdb_like."""
    path = tmp_path_factory.mktemp('standard')
    for name, builder in BUILDERS.items():
        assert builder.name == name
        builder(data_dir=str(path)).download_and_prepare(file_format='array_record')
    _as_tfrecord(path / 'imdb_like', path / 'imdb_tfrecord')
    old = os.environ.get('TFDS_DATA_DIR')
    os.environ['TFDS_DATA_DIR'] = str(path)
    yield str(path)
    if old is None:
        os.environ.pop('TFDS_DATA_DIR', None)
    else:
        os.environ['TFDS_DATA_DIR'] = old


def _as_tfrecord(src, dst):
    """A copy of a prepared dataset laid out as `tfds build` writes it by default (tfrecord
    shards; preparing real tfrecords needs TensorFlow, which is not installed)."""
    shutil.copytree(src, dst)
    version = dst / '1.0.0'
    info = json.loads((version / 'dataset_info.json').read_text())
    info['name'], info['fileFormat'] = 'imdb_tfrecord', 'tfrecord'
    (version / 'dataset_info.json').write_text(json.dumps(info))
    for f in version.glob('imdb_like-*.array_record-*'):
        f.rename(version / f.name.replace('imdb_like', 'imdb_tfrecord').replace(
            'array_record', 'tfrecord'))


def cfg(data_dir, **kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(data_dir=data_dir, **kw))


# ------------------------------------------------------------------ reading (in-process)

@pytest.mark.parametrize('name, shape', [('mnist_like', (28, 28, 1)),
                                         ('cifar10_like', (32, 32, 3))])
def test_png_images_decode_to_the_stored_pixels(tfds_data, name, shape):
    split = image_sources.load_split(cfg(tfds_data, name=name), 'test', ('image', 'label'))
    rows = split.read(np.arange(len(split)))
    rng = np.random.default_rng(1)  # the generator of the 'test' split
    want = [digit_image(k % 10, rng, shape[:2], shape[2]) for k in range(len(split))]
    assert rows['image'].dtype == np.uint8 and rows['image'].shape == (64, *shape)
    np.testing.assert_array_equal(rows['image'], np.stack(want))  # PNG is lossless
    np.testing.assert_array_equal(rows['label'], np.arange(64) % 10)


def test_missing_evaluation_split_is_found_among_the_builders(tfds_data):
    b = tfds_sources.open_builder('lm1b_like', tfds_data)
    assert tfds_sources.find_split(b, 'validation') == 'test'
    assert tfds_sources.find_split(b, 'train[:50%]') == 'train[:50%]'
    imagenet = tfds_sources.open_builder('imagenet_like', tfds_data)
    assert tfds_sources.find_split(imagenet, 'test') == 'validation'
    with pytest.raises(ValueError, match=r"split 'dev' not available for 'lm1b_like' "
                                         r"\(splits: \['test', 'train'\]\)"):
        tfds_sources.find_split(b, 'dev')
    with pytest.raises(ValueError, match=r"split 'train2' not available for 'coco_like' "
                                         r"\(splits: \['train', 'val'\]\)"):
        image_sources.load_split(cfg(tfds_data, name='coco_like'), 'train2', ('image',))


def test_text_classification_features_and_classes(tfds_data):
    imdb = cfg(tfds_data, name='imdb_like', seq_len=24)
    assert text_classes.tfds_features(imdb) == (('text',), 'label', ('neg', 'pos'))
    ag = cfg(tfds_data, name='ag_news_like', seq_len=24, pipeline='text_classes')
    assert text_classes.tfds_features(ag) == (('description', 'title'), 'label', tuple(AG_NEWS))
    assert data.num_classes(ag) == 4
    pipe = text_classes.build_pipeline(ag, split='validation', batch_size=8, seed=0)
    batch = pipe.get_batch(0)
    assert batch['inputs'].shape == batch['mask'].shape == (8, 24) and pipe.classes[3] == 'Sci/Tech'
    src = tfds.data_source('ag_news_like', split='test', data_dir=tfds_data)
    for r, k in enumerate(pipe.order.ids(np.arange(8))):  # bytes of description \n title
        item = src[int(k)]
        text = (item['description'].decode() + '\n' + item['title'].decode()).encode()[:24]
        n = int(batch['mask'][r].sum())
        assert bytes(batch['inputs'][r, :n].astype(np.uint8)) == text
        assert batch['label'][r] == item['label']
    two = [text_classes.build_pipeline(ag, split='train', batch_size=8, seed=3, process_index=p,
                                       process_count=2).get_batch(5) for p in (0, 1)]
    one = text_classes.build_pipeline(ag, split='train', batch_size=8, seed=3).get_batch(5)
    for key in one:
        np.testing.assert_array_equal(np.concatenate([t[key] for t in two]), one[key])
    with pytest.raises(Exception, match=r"data.label_key='title': expected a ClassLabel "
                                        r"feature of data.name='ag_news_like'"):
        text_classes.tfds_features(cfg(tfds_data, name='ag_news_like', label_key='title'))


def test_tfrecord_dataset_is_one_line_with_the_conversion_command(tfds_data, capsys):
    with pytest.raises(ValueError, match='as tfrecord') as e:
        image_sources.load_split(cfg(tfds_data, name='imdb_tfrecord'), 'train', ('text',))
    message = str(e.value)
    assert '\n' not in message and 'array_record' in message
    assert 'tfds convert_format --dataset_version_dir=' in message
    assert f'tfds build imdb_tfrecord --data_dir {tfds_data} --file_format=array_record' in message
    assert cli.main(['train', '--config', 'experiments/lm.py', '--workdir',
                     os.path.join(tfds_data, 'never'), '--config.data.name=imdb_tfrecord']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'jaxbig: error:' in err[0] and 'tfds convert_format' in err[0]


# ------------------------------------------------------------------ training (CLI)

@pytest.mark.parametrize('config, overrides, want', [
    ('simclr.py:data=mnist_like', [], {'view1': (8, 28, 28, 1), 'label': (8,)}),
    ('simclr.py:data=imagenet_like,image_size=24', [], {'view2': (8, 24, 24, 3)}),
    ('finetune_image.py', ['--config.data.name=cifar10_like'], {'image': (8, 32, 32, 3)}),
    ('clip.py:data=coco_like', ['--config.data.image_size=16'],
     {'image': (8, 16, 16, 3), 'text': (8, 64)}),
    ('lm.py', ['--config.data.name=lm1b_like'], {'inputs': (8, 128)}),
    ('finetune_text.py:data=imdb_like,seq=48', [], {'inputs': (8, 48), 'label': (8,)}),
])
def test_each_experiment_reads_the_dataset(tfds_data, config, overrides, want):
    """In-process and quick: the experiment's config (data=NAME or an override) prepares and
    reads the train split and the evaluation split it names (found among the builder's)."""
    c = cli.load_config(f'experiments/{config}', overrides)
    data.prepare(c.data)
    for split in (c.data.train_split, c.data.val_split):
        batch = data.build_pipeline(c.data, split=split, batch_size=8, seed=0).get_batch(0)
        assert {k: batch[k].shape for k in want} == want
    if 'label' in want:
        assert c.model.get('num_classes', 10) == (2 if 'imdb' in config else 10)


IMAGE_EVALS = ['--config.evals.probe.max_train=64', '--config.evals.probe.max_test=32',
               '--config.evals.knn.max_train=64', '--config.evals.knn.max_test=32']


def losses(workdir, key='train/loss'):
    series = metric_series(workdir, key)
    return [series[s] for s in sorted(series)]


@pytest.mark.slow
@pytest.mark.parametrize('name, extra', [
    ('mnist_like', []),  # 1 channel, 28x28
    ('imagenet_like', ['image_size=24']),  # 3 channels, sizes 20..40, validation only
])
@pytest.mark.slow
def test_simclr_trains_on_png_images(tfds_data, tmp_path, name, extra):
    arg = ','.join([f'data={name}', 'backbone=cnn', 'width=8', 'steps=4', 'batch=32', *extra])
    run_cli('train', '--config', f'experiments/simclr.py:{arg}', '--workdir', str(tmp_path),
            '--config.train.log_every=1', *IMAGE_EVALS)
    loss = losses(tmp_path)
    assert len(loss) == 4 and np.isfinite(loss).all()
    probe = metric_series(tmp_path, 'probe/accuracy')
    assert probe and 0.0 <= list(probe.values())[-1] <= 1.0


@pytest.mark.slow
def test_image_finetuning_trains_on_cifar10_shaped_png(tfds_data, tmp_path):
    run_cli('train', '--config', 'experiments/finetune_image.py:steps=12,batch=32,lr=3e-2',
            '--workdir', str(tmp_path), '--config.data.name=cifar10_like',
            '--config.model.backbone.variant=cnn', '--config.model.backbone.width=8',
            '--config.train.log_every=1',
            '--config.evals.val.num_examples=0', '--config.evals.val.batch_size=64')
    loss = losses(tmp_path)
    assert len(loss) == 12 and np.mean(loss[-3:]) < np.mean(loss[:3])
    assert metric_series(tmp_path, 'val/accuracy')


@pytest.mark.slow
def test_clip_trains_on_coco_shaped_captions(tfds_data, tmp_path):
    run_cli('train', '--config', 'experiments/clip.py:data=coco_like,image=cnn,width=16,'
            'embed=16,steps=4,batch=16', '--workdir', str(tmp_path),
            '--config.data.image_size=16', '--config.data.max_len=48',
            '--config.train.log_every=1', '--config.evals.retrieval.max_examples=32')
    loss = losses(tmp_path)
    assert len(loss) == 4 and np.isfinite(loss).all()
    assert metric_series(tmp_path, 'retrieval/i2t_r1')


@pytest.mark.slow
def test_lm_trains_on_a_test_only_dataset(tfds_data, tmp_path):
    run_cli('train', '--config', 'experiments/lm.py:steps=6', '--workdir', str(tmp_path),
            '--config.data.name=lm1b_like', *TINY_LM, '--config.evals.val.num_examples=0',
            '--config.optimizer.lr=3e-3')
    loss = losses(tmp_path)
    assert len(loss) == 6 and loss[-1] < loss[0]
    assert np.isfinite(list(metric_series(tmp_path, 'val/bits_per_byte').values())).all()


@pytest.mark.slow
@pytest.mark.parametrize('name, classes', [('imdb_like', 2), ('ag_news_like', 4)])
def test_text_classification_trains_via_cli(tfds_data, tmp_path, name, classes):
    run_cli('train', '--config', f'experiments/finetune_text.py:data={name},steps=12,batch=16,'
            'seq=48', '--workdir', str(tmp_path), '--config.model.backbone.num_layers=1',
            '--config.model.backbone.embed_dim=32', '--config.model.backbone.num_heads=2',
            '--config.model.backbone.mlp_dim=64', '--config.train.log_every=1',
            '--config.evals.val.num_examples=0', '--config.evals.val.batch_size=32')
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['model']['num_classes'] == classes  # 'auto': the ClassLabel's
    loss = losses(tmp_path)
    assert len(loss) == 12 and np.mean(loss[-3:]) < np.mean(loss[:3])
    assert metric_series(tmp_path, 'val/accuracy')
