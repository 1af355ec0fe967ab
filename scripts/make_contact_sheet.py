"""Draw docs/phantoms.png: four phantoms per modality with their masks outlined in palette colours
(instances outlined in white), so a reader can judge the phantoms at a glance. Run from the repo root."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from rcmed.data.synth import GENERATORS, synth
from rcmed.io.normalize import normalize
from rcmed.overlay import paint

TILE = 160
PER_ROW = 4


def tile(modality: str, seed: int) -> Image.Image:
    p = synth(modality, seed)
    x = normalize(p.image)
    rgb = paint(x, list(p.masks.values()), mode="outline")
    if p.instances is not None:
        rgb[find_boundaries(p.instances, mode="inner")] = (255, 255, 255)
    im = Image.fromarray(rgb).resize((TILE, TILE), Image.NEAREST)
    d = ImageDraw.Draw(im)
    d.text((3, TILE - 12), ", ".join(p.masks) or (p.instance_target or ""), fill=(255, 255, 0))
    return im


def main() -> None:
    mods = list(GENERATORS)
    label_w = 90
    sheet = Image.new("RGB", (label_w + PER_ROW * TILE, len(mods) * TILE), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for r, m in enumerate(mods):
        draw.text((6, r * TILE + TILE // 2 - 6), m, fill=(255, 255, 255))
        for c in range(PER_ROW):
            sheet.paste(tile(m, c), (label_w + c * TILE, r * TILE))
    out = Path(__file__).resolve().parents[1] / "docs" / "phantoms.png"
    sheet.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
