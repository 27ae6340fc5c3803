"""SimCLR image augmentations as pure, seeded NumPy functions.

Every random choice comes from one `np.random.Generator` per example, seeded by
(seed, batch index, global row) (`example_rng`), so a batch's views are a pure function of
(seed, i) and do not depend on how the batch is split over hosts. Parameters are drawn per
example; the image operations are vectorised over the batch.

    images float32 [B, H, W, C] in [0, 1]  ->  view float32 [B, H, W, C] in [0, 1]
    B images of different sizes [H_b, W_b, C] + size (S, S)  ->  view float32 [B, S, S, C]

(the random resized crop of each image goes straight to the output size, so datasets of
variable-size images such as imagenet2012 need no resize beforehand).

SimCLR's recipe (Chen et al. 2020, appendix A): random resized crop (scale 0.08-1, aspect
3/4-4/3) -> horizontal flip (p 0.5) -> colour jitter (p 0.8; brightness, contrast,
saturation 0.8 * s; hue is left out here) -> grayscale (p 0.2) -> Gaussian blur (p 0.5,
sigma 0.1-2.0 px scaled to the image, kernel 10 % of the side; optional, off for small images).

Flip: off by default for digits. A mirrored digit is not a digit of the same class (a
mirrored 2 is no 2; 3 / E-shapes change), so asking the features to be invariant to it
removes information the classes need; on natural images (cifar10) flip is on. Colour jitter
on grey-scale data keeps only brightness and contrast; grayscale needs colour (C == 3).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    crop_min_scale: float = 0.08  # random resized crop: area fraction in [min, 1]
    flip: bool = True
    jitter_strength: float = 0.5  # s; brightness/contrast/saturation factors in 1 +- 0.8 s
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2  # only applied to colour (C == 3) images
    blur_prob: float = 0.0


def example_rng(seed: int, batch_index: int, global_row: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(batch_index), int(global_row)])


def random_crop_boxes(rng, height: int, width: int, min_scale: float, ratio=(3 / 4, 4 / 3)):
    """One box (y0, x0, h, w) in pixels, torchvision's RandomResizedCrop sampling: area
    fraction ~ U[min_scale, 1], log aspect ~ U[log r0, log r1]; 10 tries, then the whole image."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = np.sqrt(target * aspect), np.sqrt(target / aspect)
        if w <= width and h <= height:
            return np.array([rng.uniform(0, height - h), rng.uniform(0, width - w), h, w])
    return np.array([0.0, 0.0, float(height), float(width)])


def crop_and_resize(images: np.ndarray, boxes: np.ndarray, size=None) -> np.ndarray:
    """Bilinear resampling of box b of image b to `size` (default: the input's H, W).

    images [B, H, W, C]; boxes [B, 4] (y0, x0, h, w) in pixels (pixel centres at k + 0.5)
    -> [B, out_h, out_w, C] float.
    """
    b, height, width, _ = images.shape
    out_h, out_w = size or (height, width)

    def axis(start, length, out, extent):
        src = start[:, None] + (np.arange(out) + 0.5) * (length[:, None] / out) - 0.5
        src = np.clip(src, 0, extent - 1)
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, extent - 1), (src - lo).astype(np.float32)

    y_lo, y_hi, wy = axis(boxes[:, 0], boxes[:, 2], out_h, height)
    x_lo, x_hi, wx = axis(boxes[:, 1], boxes[:, 3], out_w, width)
    n = np.arange(b)[:, None, None]
    gather = lambda y, x: images[n, y[:, :, None], x[:, None, :]].astype(np.float32)
    wy, wx = wy[:, :, None, None], wx[:, None, :, None]
    top = gather(y_lo, x_lo) * (1 - wx) + gather(y_lo, x_hi) * wx
    bottom = gather(y_hi, x_lo) * (1 - wx) + gather(y_hi, x_hi) * wx
    return top * (1 - wy) + bottom * wy


def flip_left_right(images: np.ndarray, do_flip: np.ndarray) -> np.ndarray:
    """images [B, H, W, C]; do_flip bool [B]."""
    return np.where(do_flip[:, None, None, None], images[:, :, ::-1], images)


def _gray(images: np.ndarray) -> np.ndarray:
    """Luma of [B, H, W, C] as [B, H, W, 1] (ITU-R 601 weights for C == 3)."""
    if images.shape[-1] == 1:
        return images
    return (images @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def colour_jitter(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """factors [B, 3] = (brightness, contrast, saturation) multipliers (1 = unchanged).

    brightness: x * f; contrast: mean + (x - mean) * f (mean grey level of the image);
    saturation: grey + (x - grey) * f (colour images only). Clipped to [0, 1] after each.
    """
    f = factors[:, None, None, None, :].astype(np.float32)
    x = np.clip(images * f[..., 0], 0, 1)
    mean = _gray(x).mean(axis=(1, 2, 3), keepdims=True)
    x = np.clip(mean + (x - mean) * f[..., 1], 0, 1)
    if x.shape[-1] == 3:
        gray = _gray(x)
        x = np.clip(gray + (x - gray) * f[..., 2], 0, 1)
    return x


def to_grayscale(images: np.ndarray, do_gray: np.ndarray) -> np.ndarray:
    """Colour images [B, H, W, 3]: rows with do_gray become grey (all channels = luma)."""
    if images.shape[-1] != 3:
        return images
    return np.where(do_gray[:, None, None, None], np.repeat(_gray(images), 3, -1), images)


def gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur, per-example sigma [B] in pixels (0 = unchanged); kernel
    width 2 * ceil(0.05 * H) + 1 >= 3, reflect padding."""
    b, height, width, _ = images.shape
    radius = max(1, int(np.ceil(0.05 * height)))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    safe = np.maximum(sigma, 1e-3)[:, None].astype(np.float32)
    kernel = np.exp(-0.5 * (taps[None] / safe) ** 2)
    kernel = np.where(sigma[:, None] > 0, kernel, (taps[None] == 0).astype(np.float32))
    kernel = kernel / kernel.sum(axis=1, keepdims=True)  # [B, taps]
    k = kernel[:, :, None, None, None]
    pad = np.pad(images, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode='reflect')
    x = sum(k[:, t] * pad[:, t : t + height] for t in range(len(taps)))
    pad = np.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode='reflect')
    return sum(k[:, t] * pad[:, :, t : t + width] for t in range(len(taps)))


def draw_view_params(rng, cfg: AugmentConfig, height: int, width: int, out_height=None) -> dict:
    """All random choices for one view of one example: the crop box in the example's own
    height x width pixels, the blur sigma in pixels of the output (out_height, default
    height)."""
    s = cfg.jitter_strength
    jitter = rng.uniform() < cfg.jitter_prob
    factors = rng.uniform(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, 3) if jitter else np.ones(3)
    blur = rng.uniform() < cfg.blur_prob
    sigma = rng.uniform(0.1, 2.0) * (out_height or height) / 224 * 10 if blur else 0.0
    return dict(
        box=random_crop_boxes(rng, height, width, cfg.crop_min_scale),
        flip=cfg.flip and rng.uniform() < 0.5,
        factors=factors,
        gray=rng.uniform() < cfg.grayscale_prob,
        sigma=sigma,
    )


def _same_size(images) -> bool:
    return isinstance(images, np.ndarray) and images.dtype != object


def apply_view(images, params: list[dict], size=None) -> np.ndarray:
    """images float32 [B, H, W, C] in [0, 1] (or a sequence of B [H_b, W_b, C]) + one params
    dict per row -> one view float32 [B, *size, C] (size default: H, W)."""
    stack = lambda key: np.array([p[key] for p in params])
    boxes = stack('box')
    if _same_size(images):
        x = crop_and_resize(images, boxes, size)
    else:  # different sizes: one crop at a time, each resized to `size`
        x = np.stack([crop_and_resize(im[None], b[None], size)[0] for im, b in zip(images, boxes)])
    x = flip_left_right(x, stack('flip'))
    x = colour_jitter(x, stack('factors'))
    x = to_grayscale(x, stack('gray'))
    sigma = stack('sigma')
    if np.any(sigma > 0):
        x = gaussian_blur(x, sigma)
    return x.astype(np.float32)


def simclr_views(images, rngs, cfg: AugmentConfig, num_views: int = 2, size=None):
    """images float32 [B, H, W, C] in [0, 1], or a sequence of B float32 [H_b, W_b, C] of
    different sizes; rngs: one Generator per row; size (out_h, out_w), default the input's
    H, W (required for images of different sizes).
    -> list of `num_views` views, each float32 [B, out_h, out_w, C] in [0, 1]."""
    shapes = [tuple(np.shape(x)[:2]) for x in images]
    if size is None:
        if len(set(shapes)) > 1:
            raise ValueError(f'images of different sizes {sorted(set(shapes))[:3]}...: give size')
        size = shapes[0]
    size = tuple(int(v) for v in size)
    params = [
        [draw_view_params(r, cfg, h, w, size[0]) for r, (h, w) in zip(rngs, shapes)]
        for _ in range(num_views)
    ]
    return [apply_view(images, p, size) for p in params]
