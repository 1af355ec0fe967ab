"""Paint masks over an image in named colours: the picture half of colour-region description.

The palette is fixed and ordered so that target k always gets colour k; names are plain words a
language model can say ("red", "cyan"). Pure functions: arrays in, an RGB uint8 array out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rcmed.errors import InvalidMaskError, ShapeMismatchError

# Distinct, nameable colours (after Sasha Trubetskoy's list of 20 distinct colours).
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 25, 75)),
    ("green", (60, 180, 75)),
    ("blue", (0, 130, 200)),
    ("yellow", (255, 225, 25)),
    ("cyan", (70, 240, 240)),
    ("magenta", (240, 50, 230)),
    ("orange", (245, 130, 48)),
    ("purple", (145, 30, 180)),
    ("lime", (210, 245, 60)),
    ("pink", (250, 190, 212)),
    ("teal", (0, 128, 128)),
    ("brown", (170, 110, 40)),
)


def colour(index: int) -> tuple[str, tuple[int, int, int]]:
    """Name and RGB of palette entry `index`; raises if there are more targets than colours."""
    if not 0 <= index < len(PALETTE):
        raise InvalidMaskError("masks", f"{index + 1} targets but only {len(PALETTE)} palette colours; split them over several overlays")
    return PALETTE[index]


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) float in [0, 1] -> (H, W, 3) uint8."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ShapeMismatchError("image", f"expected (H, W) or (H, W, 3), got {x.shape}")
    return (np.clip(x[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of a boolean mask (4-connected), one pixel thick."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def paint(
    image: np.ndarray,
    masks: list[np.ndarray],
    mode: Literal["fill", "outline"] = "fill",
    alpha: float = 0.45,
) -> np.ndarray:
    """Overlay masks on an image, mask k in `PALETTE[k]`.

    Args:
        image: (H, W) or (H, W, 3), float in [0, 1] (use `rcmed.io.normalize` first).
        masks: boolean (H, W) masks; empty masks are allowed and paint nothing.
        mode: "fill" blends each region with `alpha` and draws its outline opaque; "outline" draws
            the outline only.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    rgb = to_rgb_uint8(image).astype(np.float32)
    h, w = rgb.shape[:2]
    for k, mask in enumerate(masks):
        name, col = colour(k)
        m = np.asarray(mask)
        if m.shape != (h, w):
            raise ShapeMismatchError(f"mask {k} ({name})", f"shape {m.shape} != image shape {(h, w)}")
        m = m.astype(bool)
        c = np.array(col, np.float32)
        if mode == "fill":
            rgb[m] = (1.0 - alpha) * rgb[m] + alpha * c
        rgb[outline(m)] = c
    return rgb.round().astype(np.uint8)
