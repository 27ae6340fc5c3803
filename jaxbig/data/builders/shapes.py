"""`shapes`: procedurally drawn shapes with compositional captions, as a TFDS dataset.

Each image shows one filled shape on a dark, noisy background; its caption names the four
factors that drew it, e.g. 'a small red triangle at the top left':

    colour    red green blue yellow purple white                            (6)
    shape     circle square triangle diamond                                (4)
    size      small large                                                   (2)
    position  3 x 3 grid: 'at the top left', 'at the top', ..., 'in the center',
              'on the left', ..., 'at the bottom right'                     (9)

432 distinct captions. Factors are drawn uniformly and independently; example k of split s
is a pure function of (seed, s, k), so any count and resolution is reproducible.

Features: `image` uint8[R, R, 3], `caption` Text, `label` ClassLabel of the 24 colour-shape
pairs ('red circle', ..., in COLOURS x SHAPES order), and `colour`, `shape`, `size`,
`position` ClassLabels. Splits `train` and `test`.

Count, resolution and seed come from the builder config (`ShapesConfig`); the default
'r32_train5000_test1000_seed0' prepares in a few seconds. Prepare with
`jaxbig.data.image_sources.prepare(config)`.
"""

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxbig.data.builders.pystdlib import _ClassProperty

COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 180, 60),
    'blue': (50, 90, 235),
    'yellow': (230, 210, 40),
    'purple': (150, 60, 200),
    'white': (235, 235, 235),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond')
SIZES = {'small': 0.09, 'large': 0.15}  # radius as a fraction of the image side
POSITIONS = (
    'at the top left', 'at the top', 'at the top right',
    'on the left', 'in the center', 'on the right',
    'at the bottom left', 'at the bottom', 'at the bottom right',
)  # row-major over the 3 x 3 grid
CLASS_NAMES = tuple(f'{c} {s}' for c in COLOURS for s in SHAPES)
SPLIT_CODES = {'train': 0, 'test': 1}


def caption(colour: str, shape: str, size: str, position: str) -> str:
    return f'a {size} {colour} {shape} {position}'


def shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """bool mask of `shape` centred at 0; dy, dx: pixel offsets from the centre (any shape)."""
    if shape == 'circle':
        return dy**2 + dx**2 <= radius**2
    if shape == 'square':
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * radius
    if shape == 'triangle':  # apex up
        return (dy >= -radius) & (dy <= 0.8 * radius) & (np.abs(dx) <= 0.6 * (dy + radius))
    if shape == 'diamond':
        return np.abs(dy) + np.abs(dx) <= 1.15 * radius
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def draw_example(seed: int, split: str, index: int, resolution: int) -> dict:
    """Example `index` of `split`: image uint8[R, R, 3], caption and factor indices."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    colour, shape, size, position = (
        int(rng.integers(n)) for n in (len(COLOURS), len(SHAPES), len(SIZES), len(POSITIONS))
    )
    r = resolution
    background = rng.uniform(0, 50) + rng.normal(0, 8, (r, r, 1))
    image = np.repeat(background, 3, axis=-1)
    row, col = divmod(position, 3)
    cy, cx = (np.array([row, col]) + 0.5 + rng.uniform(-0.12, 0.12, 2)) * r / 3
    radius = list(SIZES.values())[size] * r * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:r, 0:r] + 0.5
    mask = shape_mask(SHAPES[shape], yy - cy, xx - cx, radius)
    rgb = np.array(list(COLOURS.values())[colour]) + rng.uniform(-15, 15, 3)
    image[mask] = rgb
    names = (list(COLOURS)[colour], SHAPES[shape], list(SIZES)[size], POSITIONS[position])
    return {
        'image': np.clip(np.round(image), 0, 255).astype(np.uint8),
        'caption': caption(*names),
        'label': colour * len(SHAPES) + shape,
        'colour': colour,
        'shape': shape,
        'size': size,
        'position': position,
    }


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    resolution: int = 32
    num_train: int = 5000
    num_test: int = 1000
    seed: int = 0


def make_config(resolution=32, num_train=5000, num_test=1000, seed=0) -> ShapesConfig:
    name = f'r{resolution}_train{num_train}_test{num_test}_seed{seed}'
    return ShapesConfig(
        name=name, resolution=resolution, num_train=num_train, num_test=num_test, seed=seed
    )


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Shapes with compositional captions; see the module docstring."""

    name = 'shapes'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [make_config()]
    pkg_dir_path = epath.Path(__file__).parent  # see pystdlib.py
    code_path = _ClassProperty(lambda cls: epath.Path(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        label = lambda names: tfds.features.ClassLabel(names=list(names))
        return self.dataset_info_from_configs(
            description='Procedurally drawn shapes with compositional captions.',
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                    'caption': tfds.features.Text(),
                    'label': label(CLASS_NAMES),
                    'colour': label(COLOURS),
                    'shape': label(SHAPES),
                    'size': label(SIZES),
                    'position': label(p.replace(' ', '_') for p in POSITIONS),
                }
            ),
            homepage='https://github.com/',
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        counts = {'train': cfg.num_train, 'test': cfg.num_test}
        return {s: self._generate_examples(s, n) for s, n in counts.items()}

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        for k in range(count):
            yield k, draw_example(cfg.seed, split, k, cfg.resolution)
