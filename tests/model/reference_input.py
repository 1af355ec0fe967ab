"""The fixed input of the LiteMedSAM reference fixture: a formula, not random numbers, so it is
the same on every machine and torch version."""

from __future__ import annotations

import numpy as np

BOX = [60.0, 70.0, 190.0, 200.0]  # x0, y0, x1, y1 in the 256 input


def reference_image() -> np.ndarray:
    """(3, 256, 256) float32 in [0, 1]: a bright disc with a darker core over smooth stripes."""
    yy, xx = np.mgrid[:256, :256].astype(np.float32)
    base = 0.3 + 0.1 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    disc = ((yy - 135) ** 2 + (xx - 125) ** 2) <= 55**2
    core = ((yy - 140) ** 2 + (xx - 130) ** 2) <= 20**2
    img = base + 0.45 * disc - 0.25 * core
    return np.clip(np.stack([img, img * 0.95, img * 0.9]), 0, 1).astype(np.float32)
