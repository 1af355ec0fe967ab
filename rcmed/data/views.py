"""Other fields of view of a 2-D training image: the image and its masks zoomed out or in together.

Why: each real dataset shows its targets at one field of view (Drishti-GS1's optic disc fills a disc-centred crop,
JSRT's lungs fill the radiograph), and a model that learnt them so does not find them in a wider or a closer view:
on validation, the default model found the optic disc on 9 of 9 images as they are, on 4 of 9 shrunk to 0.6 of
their side and on 0 of 9 at 0.4 (`scripts/train_default.py scalecheck`), and on the whole-retina photograph of
`make demo` it answered "optic disc not present". The decoder stage (`rcmed.train.decoder_stage`) therefore also
learns from one other view per record, drawn here:

- zoom out: the image shrunk to `scale` of its side and placed on a canvas of its own size at a random place,
  the rest filled with the median colour of the image's outermost pixels (black for a fundus photograph or a
  radiograph, white-pink for an H&E slide), so the border is the image's own background, not a new frame;
- zoom in: a crop of `side` of the image's side, resized up to the image's size; a crop is kept only if each
  present target keeps at least `KEEP` of its area (a target cut away would turn a "present" question into a
  wrong one).

MONAI's `RandZoom` pads symmetrically (the target would stay in the centre) and its fill is zero, an edge copy
or a reflection (a reflected optic disc is a second disc the mask does not hold); placing a resized image on a
canvas is a few lines of numpy over PIL's resampling, so it is written here.

Shapes: image (H, W) or (H, W, C) of any dtype; masks (K, H, W) bool; instances (H, W) integer labels. Every
output has its input's shape and dtype; masks and labels are resampled nearest, the image bilinearly.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
from PIL import Image

from rcmed.data.store import Sample

ZOOM_OUT = (0.4, 0.85)  # range of the zoomed-out image's side, as a fraction of the canvas
ZOOM_IN = (0.5, 0.8)  # range of the crop's side, as a fraction of the image
ZOOM_OUT_SHARE = 0.6  # views that zoom out (the rest zoom in)
KEEP = 0.5  # a zoom-in crop must keep at least this share of each present target's area
TRIES = 10  # crops tried before a view zooms out instead


def _resize(a: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    """(H, W) or (H, W, C) -> (h, w) or (h, w, C), same dtype."""
    if a.ndim == 3:
        return np.stack([_resize(a[..., c], h, w, nearest) for c in range(a.shape[2])], -1)
    if a.dtype == bool:
        return _resize(a.astype(np.uint8), h, w, True).astype(bool)
    if a.dtype == np.uint8:
        src = Image.fromarray(a)
    elif a.dtype.kind in "ui":
        src = Image.fromarray(a.astype(np.int32), mode="I")
    else:
        src = Image.fromarray(a.astype(np.float32), mode="F")
    out = np.asarray(src.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))
    return out.astype(a.dtype)


def border_fill(image: np.ndarray) -> np.ndarray:
    """The median of the image's outermost ring of pixels, per channel: () or (C,), the image's dtype."""
    ring = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(ring, axis=0).astype(image.dtype)


def zoom_out(image: np.ndarray, masks: np.ndarray, scale: float, top_left: tuple[int, int],
             fill: np.ndarray | float | None = None, instances: np.ndarray | None = None):
    """The image and masks shrunk to `scale` of their side, placed with their top left corner at `top_left`
    (y, x; pixels, clipped so the image stays inside) on a canvas of the input's size filled with `fill` (default:
    `border_fill`). Returns (image, masks, instances)."""
    hgt, wid = image.shape[:2]
    h, w = max(8, min(hgt, round(hgt * scale))), max(8, min(wid, round(wid * scale)))
    y0, x0 = min(max(0, top_left[0]), hgt - h), min(max(0, top_left[1]), wid - w)
    canvas = np.empty_like(image)
    canvas[...] = border_fill(image) if fill is None else fill
    canvas[y0:y0 + h, x0:x0 + w] = _resize(image, h, w, nearest=False)
    m = np.zeros_like(masks)
    for k in range(len(masks)):
        m[k, y0:y0 + h, x0:x0 + w] = _resize(masks[k], h, w, nearest=True)
    inst = None
    if instances is not None:
        inst = np.zeros_like(instances)
        inst[y0:y0 + h, x0:x0 + w] = _resize(instances, h, w, nearest=True)
    return canvas, m, inst


def zoom_in(image: np.ndarray, masks: np.ndarray, box: tuple[int, int, int, int], instances: np.ndarray | None = None):
    """The crop `box` (y0, x0, h, w; pixels) of the image and masks, resized to the input's size. Returns
    (image, masks, instances)."""
    hgt, wid = image.shape[:2]
    y0, x0, h, w = box
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    m = np.stack([_resize(mk[crop], hgt, wid, nearest=True) for mk in masks]) if len(masks) else masks.copy()
    inst = None if instances is None else _resize(instances[crop], hgt, wid, nearest=True)
    return _resize(image[crop], hgt, wid, nearest=False), m, inst


def _kept(masks: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y0, x0, h, w = box
    for mk in masks:
        area = int(mk.sum())
        if area and int(mk[y0:y0 + h, x0:x0 + w].sum()) < KEEP * area:
            return False
    return True


def random_view(sample: Sample, rng: random.Random) -> Sample:
    """`sample` seen from another field of view: zoomed out (ZOOM_OUT_SHARE of the draws) or in, with its masks and
    instance map moved the same way. A present target stays present (see `KEEP`); the record is the same."""
    hgt, wid = sample.image.shape[:2]
    if rng.random() >= ZOOM_OUT_SHARE:
        for _ in range(TRIES):
            side = rng.uniform(*ZOOM_IN)
            h, w = max(8, round(hgt * side)), max(8, round(wid * side))
            box = (rng.randint(0, hgt - h), rng.randint(0, wid - w), h, w)
            if _kept(sample.masks, box):
                image, masks, inst = zoom_in(sample.image, sample.masks, box, sample.instances)
                return replace(sample, image=image, masks=masks, instances=inst)
    scale = rng.uniform(*ZOOM_OUT)
    while True:  # a present target too small to survive the shrink: a larger scale, up to the image as it is
        h, w = round(hgt * scale), round(wid * scale)
        image, masks, inst = zoom_out(sample.image, sample.masks, scale, (rng.randint(0, hgt - h), rng.randint(0, wid - w)),
                                      instances=sample.instances)
        lost = any(before.any() and not after.any() for before, after in zip(sample.masks, masks, strict=True))
        if not lost:
            return replace(sample, image=image, masks=masks, instances=inst)
        if scale >= ZOOM_OUT[1]:
            return sample
        scale = min(ZOOM_OUT[1], scale + 0.15)
