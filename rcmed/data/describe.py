"""Colour-region description: measure each painted region and say what it is, where, how big,
what shape, how bright and how it relates to the others — in words, with every number measured.

`describe(image, masks, names, ...)` returns a `Description`: one `RegionFacts` per target (all
measurements, machine-readable) plus seeded text. `describe_instances(...)` does the same for an
instance label map (cells, nuclei): count, size distribution and spatial distribution.
Pure functions: arrays in, dataclasses out; painting is `rcmed.overlay.paint`.

Why measured by hand rather than with `skimage.measure.regionprops`: the description must run at
tens of millions of regions, and regionprops computes the convex hull as an image and every
property through per-region Python objects (about 2 ms per organ-sized region at 256², 0.1 ms per
nucleus). Here shape moments come from one pass over the region's pixels, the hull from its
boundary points with qhull, and instance statistics from `np.bincount` over the whole label map;
the definitions (central moments, eccentricity, orientation, 4-connected perimeter) follow
regionprops and are checked against it in the tests.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from rcmed.errors import EmptyInputError, InvalidMaskError, ShapeMismatchError
from rcmed.io.limits import binary_mask
from rcmed.overlay import PALETTE

ShapeClass = Literal["round", "oval", "elongated", "lobulated", "irregular", "fragmented"]

# Words for "brighter/darker than surroundings" per modality.
_INTENSITY_WORDS = {
    "ct": ("hyperdense", "hypodense", "isodense"),
    "mri": ("hyperintense", "hypointense", "isointense"),
    "ultrasound": ("hyperechoic", "hypoechoic", "isoechoic"),
    "pet": ("showing higher uptake", "showing lower uptake", "showing similar uptake"),
    "xray": ("more radiopaque", "more radiolucent", "of similar opacity"),
}
_DEFAULT_INTENSITY = ("brighter", "darker", "of similar brightness")
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_PATIENT_WORD = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}


@dataclass
class RegionFacts:
    """Measurements of one target. Coordinates: pixel (row, col); box is [x0, y0, x1, y1] inclusive
    in pixels (x = column). Areas in pixels, and mm² when spacing is known."""

    name: str
    colour: str
    present: bool
    area_px: int = 0
    area_mm2: float | None = None
    share_image: float = 0.0
    parent: str | None = None
    share_parent: float | None = None
    centroid: tuple[float, float] | None = None
    box: list[int] | None = None
    grid_position: str | None = None
    patient_position: str | None = None
    n_components: int = 0
    circularity: float = 0.0
    solidity: float = 0.0
    eccentricity: float = 0.0
    axis_ratio: float = 0.0
    orientation_deg: float = 0.0
    major_axis_px: float = 0.0
    shape: str | None = None
    boundary: str | None = None
    intensity: str | None = None
    contrast: float | None = None
    relations: list[str] = field(default_factory=list)
    # instance maps only
    count: int | None = None
    size_median_px: float | None = None
    size_cv: float | None = None
    size_variability: str | None = None
    distribution: str | None = None
    text: str = ""


@dataclass
class Description:
    """All regions of one image and the full text. `regions` follow the order of the input masks."""

    regions: list[RegionFacts]
    text: str

    def to_json(self) -> dict[str, object]:
        out = []
        for r in self.regions:
            d = asdict(r)
            d["centroid"] = list(r.centroid) if r.centroid else None
            out.append(d)
        return {"text": self.text, "regions": out}


# ----------------------------------------------------------------------------- measurement


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]: rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _moments(rr: np.ndarray, cc: np.ndarray) -> tuple[float, float, float, float]:
    """(eccentricity, orientation in degrees from the image x axis, counter-clockwise as seen on
    screen, major axis length, minor axis length) from second central moments, as regionprops."""
    r = rr - rr.mean()
    c = cc - cc.mean()
    mu_rr, mu_cc, mu_rc = float((r * r).mean()), float((c * c).mean()), float((r * c).mean())
    common = math.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    l1 = (mu_rr + mu_cc) / 2 + common
    l2 = max((mu_rr + mu_cc) / 2 - common, 0.0)
    ecc = math.sqrt(1 - l2 / l1) if l1 > 0 else 0.0
    # Angle of the major axis: in (row, col) the major eigenvector direction; convert to screen
    # degrees where 0 = horizontal and 90 = vertical (rows grow downward, so negate the row part).
    theta = 0.5 * math.atan2(2 * mu_rc, mu_cc - mu_rr)  # angle from +col axis toward +row axis
    deg = (-math.degrees(theta)) % 180.0
    return ecc, deg, 4 * math.sqrt(l1 + 1 / 12), 4 * math.sqrt(l2 + 1 / 12)


def _erode(m: np.ndarray) -> np.ndarray:
    """Binary erosion by a 3x3 cross, outside counted as background (slicing: no per-call overhead)."""
    out = np.zeros_like(m)
    out[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3x3 cross."""
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


_PERIM_WEIGHTS = np.zeros(50)
_PERIM_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIM_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIM_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def _perimeter(q: np.ndarray) -> tuple[float, np.ndarray]:
    """(perimeter, border pixels) of a mask padded by at least 2 background pixels.

    The same estimate as `skimage.measure.perimeter(neighborhood=4)` (border pixels classified by
    their 3x3 pattern, weighted 1, sqrt(2) or (1 + sqrt(2)) / 2), with the convolution done by slicing.
    """
    border = (q & ~_erode(q)).astype(np.uint8)
    b = border
    code = (b[1:-1, 1:-1] + 2 * (b[:-2, 1:-1] + b[2:, 1:-1] + b[1:-1, :-2] + b[1:-1, 2:])
            + 10 * (b[:-2, :-2] + b[:-2, 2:] + b[2:, :-2] + b[2:, 2:]))
    return float(np.bincount(code.ravel(), minlength=50) @ _PERIM_WEIGHTS), border.astype(bool)


def _hull(border: np.ndarray, area: int) -> float:
    """Convex hull area of a region, from the corners of its border pixels (qhull)."""
    r, c = np.nonzero(border)
    pts = np.concatenate([np.stack([r + dr, c + dc], axis=1) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return float(area)
    return float(hull.volume)  # in 2-D qhull's "volume" is the area


def _grid(centroid: tuple[float, float], shape: tuple[int, int]) -> str:
    row = ("upper", "middle", "lower")[min(2, int(3 * centroid[0] / shape[0]))]
    col = ("left", "centre", "right")[min(2, int(3 * centroid[1] / shape[1]))]
    if row == "middle" and col == "centre":
        return "centre"
    if row == "middle":
        return f"middle {col}"
    return f"{row} {col}"


def grid_position(mask: np.ndarray) -> str:
    """Where a non-empty 2-D mask's centroid lies on the image's 3x3 grid ("centre", "upper left", ...)."""
    rr, cc = np.nonzero(mask)
    return _grid((float(rr.mean()), float(cc.mean())), mask.shape[:2])


def _patient_position(centroid: tuple[float, float], shape: tuple[int, int], orientation: str) -> str | None:
    """Patient-terms position from the offset of the centroid from the image centre."""
    words = []
    for axis in (1, 0):  # columns first: left/right reads naturally first
        letter = orientation[axis]
        offset = centroid[axis] / max(shape[axis] - 1, 1) - 0.5
        if abs(offset) < 1 / 6:
            continue
        toward = letter if offset > 0 else _OPPOSITE[letter]
        words.append(_PATIENT_WORD[toward])
    if not words:
        return "central"
    return " ".join(words)


def _classify(n_comp: int, largest_share: float, axis_ratio: float, solidity: float, circularity: float,
              roughness: float) -> tuple[str, str]:
    """(shape class, boundary) from measured shape numbers.

    `roughness` is the perimeter over the perimeter of the morphologically smoothed region: pixel-
    scale jaggedness raises it, large smooth lobes do not. Concavity is read from `solidity`.
    """
    boundary = "smooth" if roughness < 1.1 else "irregular"
    if n_comp > 1 and largest_share < 0.8:
        return "fragmented", boundary
    if axis_ratio < 0.4:
        return "elongated", boundary
    if boundary == "irregular":
        return "irregular", boundary
    if solidity < 0.93:
        return "lobulated", boundary
    if axis_ratio >= 0.8 and circularity >= 0.8:
        return "round", boundary
    return "oval", boundary


def _roughness(q: np.ndarray, perim: float) -> float:
    """Perimeter / perimeter after an opening and closing with a 3x3 cross (spikes and notches of
    a pixel or two removed). Near 1 for smooth outlines, larger for jagged ones. `q` is padded."""
    smooth = _erode(_dilate(_dilate(_erode(q))))
    if not smooth.any():
        return 1.0
    sp, _ = _perimeter(smooth)
    return perim / sp if sp > 0 else 1.0


def _intensity(gray: np.ndarray, crop_mask: np.ndarray, box: tuple[int, int, int, int], ring: int = 3) -> float | None:
    """Mean inside minus mean of a `ring`-pixel band around the region, in normalised units."""
    r0, r1, c0, c1 = box
    h, w = gray.shape
    R0, R1, C0, C1 = max(r0 - ring, 0), min(r1 + ring + 1, h), max(c0 - ring, 0), min(c1 + ring + 1, w)
    m = np.zeros((R1 - R0, C1 - C0), bool)
    m[r0 - R0: r1 - R0 + 1, c0 - C0: c1 - C0 + 1] = crop_mask
    grown = m
    for _ in range(ring):
        grown = _dilate(grown)
    band = grown & ~m
    if not band.any():
        return None
    window = gray[R0:R1, C0:C1]
    return float(window[m].mean() - window[band].mean())


def _measure(mask: np.ndarray, gray: np.ndarray | None, name: str, colour: str,
             spacing: tuple[float, float] | None, orientation: str | None) -> RegionFacts:
    h, w = mask.shape
    box = _bbox(mask)
    if box is None:
        return RegionFacts(name=name, colour=colour, present=False)
    r0, r1, c0, c1 = box
    crop = mask[r0: r1 + 1, c0: c1 + 1]
    rr, cc = np.nonzero(crop)
    area = int(rr.size)
    centroid = (float(rr.mean() + r0), float(cc.mean() + c0))
    ecc, deg, major, minor = _moments(rr.astype(np.float64), cc.astype(np.float64))
    labels, n_comp = ndi.label(crop)
    largest = float(np.bincount(labels.ravel())[1:].max()) / area if n_comp > 1 else 1.0
    q = np.pad(crop, 2)
    perim, border = _perimeter(q)
    hull_area = _hull(border, area)
    solidity = min(1.0, area / hull_area) if hull_area > 0 else 1.0
    circularity = min(1.0, 4 * math.pi * area / perim**2) if perim > 0 else 1.0
    roughness = _roughness(q, perim) if area >= 20 else 1.0
    axis_ratio = minor / major if major > 0 else 1.0
    shape, boundary = _classify(n_comp, largest, axis_ratio, solidity, circularity, roughness)
    contrast = _intensity(gray, crop, box) if gray is not None else None
    return RegionFacts(
        name=name, colour=colour, present=True, area_px=area,
        area_mm2=float(f"{area * spacing[0] * spacing[1]:.4g}") if spacing else None,
        share_image=area / (h * w), centroid=(round(centroid[0], 2), round(centroid[1], 2)),
        box=[c0, r0, c1, r1], grid_position=_grid(centroid, (h, w)),
        patient_position=_patient_position(centroid, (h, w), orientation) if orientation else None,
        n_components=int(n_comp), circularity=round(circularity, 3), solidity=round(solidity, 3),
        eccentricity=round(ecc, 3), axis_ratio=round(axis_ratio, 3), orientation_deg=round(deg, 1),
        major_axis_px=round(major, 1), shape=shape, boundary=boundary,
        contrast=None if contrast is None else round(contrast, 4),
    )


def _relations(masks: list[np.ndarray], facts: list[RegionFacts]) -> None:
    """Fill `relations`, `parent` and `share_parent` for every pair of present regions."""
    present = [i for i, f in enumerate(facts) if f.present]
    for i in present:
        for j in present:
            if i == j:
                continue
            a, b = facts[i], facts[j]
            # work on the union of both boxes, grown by one pixel for adjacency
            x0, y0 = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])  # type: ignore[index]
            x1, y1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])  # type: ignore[index]
            h, w = masks[i].shape
            Y0, Y1, X0, X1 = max(y0 - 1, 0), min(y1 + 2, h), max(x0 - 1, 0), min(x1 + 2, w)
            ma, mb = masks[i][Y0:Y1, X0:X1], masks[j][Y0:Y1, X0:X1]
            inter = int(np.count_nonzero(ma & mb))
            if inter >= 0.9 * a.area_px and b.area_px > a.area_px:
                a.relations.append(f"inside the {b.name}")
                if a.parent is None or b.area_px < next(f.area_px for f in facts if f.name == a.parent):
                    a.parent, a.share_parent = b.name, round(inter / b.area_px, 4)
                continue
            if inter >= 0.9 * b.area_px and a.area_px > b.area_px:
                a.relations.append(f"containing the {b.name}")
                continue
            if inter > 0:
                a.relations.append(f"overlapping the {b.name}")
                continue
            if np.any(_dilate(ma) & mb):
                a.relations.append(f"adjacent to the {b.name}")
            dr = a.centroid[0] - b.centroid[0]  # type: ignore[index]
            dc = a.centroid[1] - b.centroid[1]  # type: ignore[index]
            parts = []
            if abs(dr) > 0.5 * abs(dc):
                parts.append("above" if dr < 0 else "below")
            if abs(dc) > 0.5 * abs(dr):
                parts.append("left of" if dc < 0 else "right of")
            a.relations.append(f"{' and '.join(parts)} the {b.name}")


# ----------------------------------------------------------------------------- text

_T_ID = (
    "The {colour} region is the {name}.",
    "The {name} is shown in {colour}.",
    "In {colour}: the {name}.",
    "The area outlined in {colour} corresponds to the {name}.",
)
_T_POS = (
    "It lies in the {grid} of the image{patient}.",
    "It is located in the {grid} of the image{patient}.",
    "Position: {grid} of the image{patient}.",
)
_T_SIZE = (
    "It covers {area}, {share} of the image{parent}.",
    "Its area is {area}, {share} of the image{parent}.",
    "Size: {area}, about {share} of the image{parent}.",
)
_T_SHAPE = (
    "Its shape is {shape} with a {boundary} boundary{orient}.",
    "It is {shape} in shape, with a {boundary} outline{orient}.",
    "Shape: {shape}, {boundary} margin{orient}.",
)
_T_INT = (
    "It appears {word} relative to its surroundings.",
    "Compared with the surrounding tissue it is {word}.",
)
_T_REL = ("It lies {rel}.", "Relative to the other regions it is {rel}.")
_T_ABSENT = (
    "No {name} is present in this image.",
    "The {name} is not present in this image.",
    "There is no {name} in this image.",
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 else "less than 0.1%"


def _orient_words(deg: float) -> str:
    if deg < 22.5 or deg >= 157.5:
        return "horizontally"
    if deg < 67.5:
        return "diagonally (rising to the right)"
    if deg < 112.5:
        return "vertically"
    return "diagonally (falling to the right)"


def region_text(f: RegionFacts, modality: str, rng: random.Random) -> str:
    """Sentences for one region, template variants drawn from `rng`."""
    if not f.present:
        return rng.choice(_T_ABSENT).format(name=f.name)
    out = [rng.choice(_T_ID).format(colour=f.colour, name=f.name)]
    patient = f" (patient's {f.patient_position} side)" if f.patient_position and f.patient_position != "central" else ""
    if f.patient_position == "central":
        patient = " (central in the patient)"
    out.append(rng.choice(_T_POS).format(grid=f.grid_position, patient=patient))
    if f.area_mm2 is None:
        area = f"{f.area_px} pixels"
    elif f.area_mm2 < 0.1:  # microscopy scale: µm² says something, "0.0 mm²" does not
        area = f"{f.area_mm2 * 1e6:.0f} µm² ({f.area_px} pixels)"
    else:
        area = f"{f.area_mm2:.1f} mm² ({f.area_px} pixels)"
    parent = f", {_pct(f.share_parent)} of the {f.parent}" if f.parent and f.share_parent is not None else ""
    out.append(rng.choice(_T_SIZE).format(area=area, share=_pct(f.share_image), parent=parent))
    if f.shape is not None:  # an instance class (many objects) has no single shape
        orient = f", oriented {_orient_words(f.orientation_deg)}" if f.shape == "elongated" else ""
        shape = f.shape if f.shape != "fragmented" else f"fragmented into {f.n_components} parts"
        out.append(rng.choice(_T_SHAPE).format(shape=shape, boundary=f.boundary, orient=orient))
    if f.n_components > 1 and f.shape != "fragmented":
        out.append(f"It consists of {f.n_components} separate parts.")
    if f.contrast is not None:
        up, down, same = _INTENSITY_WORDS.get(modality, _DEFAULT_INTENSITY)
        word = up if f.contrast > 0.05 else down if f.contrast < -0.05 else same
        f.intensity = word
        out.append(rng.choice(_T_INT).format(word=word))
    if f.relations:
        rel = "; ".join(f.relations[:3])
        out.append(rng.choice(_T_REL).format(rel=rel))
    return " ".join(out)


# ----------------------------------------------------------------------------- public API


def _gray(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if image is None:
        return None
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if x.shape != shape:
        raise ShapeMismatchError("image", f"image shape {x.shape} != mask shape {shape}")
    if not np.isfinite(x).all():
        raise InvalidMaskError("image", "image holds NaN/inf; normalise it first")
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-8:
        return None  # a uniform (e.g. all-zero) image: intensity is not described (documented fallback)
    if lo < 0.0 or hi > 1.0:  # accept raw values too: rescale to [0, 1] for the contrast threshold
        x = (x - lo) / (hi - lo)
    return x


def describe(
    image: np.ndarray | None,
    masks: list[np.ndarray],
    names: list[str],
    *,
    modality: str = "unknown",
    spacing: tuple[float, float] | None = None,
    orientation: str | None = None,
    seed: int = 0,
) -> Description:
    """Describe binary masks painted in palette order over an image.

    Args:
        image: (H, W) or (H, W, 3), ideally normalised to [0, 1] (`rcmed.io.normalize`); None
            skips intensity statements. A uniform image gets no intensity statement.
        masks: boolean (H, W) arrays, one per target; an empty mask yields an "absent" statement.
        names: target names, same order as `masks`.
        spacing: mm per (row, col); adds mm² areas. orientation: RAS letters of (row, col), e.g.
            "PL"; adds patient-terms positions. seed: picks template variants (deterministic).
    """
    if len(masks) != len(names):
        raise ShapeMismatchError("masks", f"{len(masks)} masks but {len(names)} names")
    if not masks:
        raise EmptyInputError("masks", "no masks to describe")
    if len(masks) > len(PALETTE):
        raise InvalidMaskError("masks", f"{len(masks)} targets but the palette has {len(PALETTE)} colours; describe them in groups")
    shape = tuple(np.asarray(masks[0]).shape)
    if len(shape) != 2:
        raise ShapeMismatchError("masks", f"masks must be 2-D (H, W), got {shape}; describe a volume slice by slice")
    bool_masks = []
    for k, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape != shape:
            raise ShapeMismatchError(f"mask {k} ({names[k]})", f"shape {m.shape} != {shape}")
        bool_masks.append(binary_mask(m, f"mask {k} ({names[k]})", "pass one boolean mask per target"))
    if orientation is not None and (len(orientation) != 2 or any(c not in _OPPOSITE for c in orientation)):
        raise InvalidMaskError("orientation", f"expected two RAS letters like 'PL', got {orientation!r}")
    gray = _gray(image, shape)  # type: ignore[arg-type]
    facts = [_measure(m, gray, names[k], PALETTE[k][0], spacing, orientation) for k, m in enumerate(bool_masks)]
    _relations(bool_masks, facts)
    texts = []
    for k, f in enumerate(facts):
        f.text = region_text(f, modality, random.Random(hash_seed(seed, k)))
        texts.append(f.text)
    return Description(regions=facts, text=" ".join(texts))


def hash_seed(seed: int, k: int) -> int:
    """A per-region seed that does not depend on Python's randomised string hashing."""
    return (seed * 1_000_003 + k * 7919) & 0x7FFFFFFF


def describe_instances(
    labels: np.ndarray,
    name: str,
    *,
    image: np.ndarray | None = None,
    modality: str = "microscopy",
    spacing: tuple[float, float] | None = None,
    seed: int = 0,
    colour_index: int = 0,
) -> Description:
    """Describe an instance label map (0 = background, 1..N = objects) as one coloured class:
    count, size distribution (median, coefficient of variation) and spatial distribution
    (Clark-Evans nearest-neighbour ratio: clustered < 0.8 <= scattered <= 1.25 < evenly spread;
    "along the border" when most objects lie within 10% of the image edge)."""
    from scipy.spatial import cKDTree

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ShapeMismatchError("labels", f"label map must be 2-D, got {lab.shape}")
    if lab.dtype.kind not in "ui":
        raise InvalidMaskError("labels", f"label map must be integer, got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise InvalidMaskError("labels", "label map holds negative labels")
    colour = PALETTE[colour_index][0]
    h, w = lab.shape
    flat = lab.ravel().astype(np.int64)
    areas = np.bincount(flat)
    ids = np.flatnonzero(areas[1:]) + 1
    rng = random.Random(hash_seed(seed, colour_index))
    if ids.size == 0:
        f = RegionFacts(name=name, colour=colour, present=False, count=0)
        f.text = rng.choice(_T_ABSENT).format(name=name)
        return Description(regions=[f], text=f.text)
    rows, cols = np.divmod(np.arange(flat.size), w)
    sizes = areas[ids].astype(np.float64)
    cr = np.bincount(flat, weights=rows, minlength=areas.size)[ids] / sizes
    cc = np.bincount(flat, weights=cols, minlength=areas.size)[ids] / sizes
    union = lab > 0
    total = int(sizes.sum())
    n = int(ids.size)
    median = float(np.median(sizes))
    cv = float(sizes.std() / sizes.mean()) if n > 1 else 0.0
    variability = "uniform" if cv < 0.25 else "moderately variable" if cv < 0.6 else "highly variable"
    pts = np.stack([cr, cc], axis=1)
    if n >= 3:
        d, _ = cKDTree(pts).query(pts, k=2)
        ratio = float(d[:, 1].mean() / (0.5 * math.sqrt(h * w / n)))
        near_edge = np.minimum.reduce([cr, h - 1 - cr, cc, w - 1 - cc]) < 0.1 * min(h, w)
        if near_edge.mean() > 0.6 and near_edge.mean() > 2 * (1 - (0.8 * 0.8)):
            distribution = "along the image border"
        elif ratio < 0.8:
            distribution = "clustered"
        elif ratio <= 1.25:
            distribution = "scattered"
        else:
            distribution = "evenly spread"
    else:
        distribution = "isolated"
    box = _bbox(union)
    r0, r1, c0, c1 = box  # type: ignore[misc]
    centroid = (float(cr @ sizes / total), float(cc @ sizes / total))
    gray = _gray(image, (h, w))
    contrast = _intensity(gray, union[r0: r1 + 1, c0: c1 + 1], box, ring=2) if gray is not None else None  # type: ignore[arg-type]
    f = RegionFacts(
        name=name, colour=colour, present=True, area_px=total,
        area_mm2=float(f"{total * spacing[0] * spacing[1]:.4g}") if spacing else None,
        share_image=total / (h * w), centroid=(round(centroid[0], 2), round(centroid[1], 2)),
        box=[c0, r0, c1, r1], grid_position=_grid(centroid, (h, w)), n_components=n,
        count=n, size_median_px=median, size_cv=round(cv, 3), size_variability=variability,
        distribution=distribution, contrast=None if contrast is None else round(contrast, 4),
    )
    size = f"{median:.0f} pixels"
    if spacing:
        size += f" ({median * spacing[0] * spacing[1] * 1e6:.1f} µm²)" if spacing[0] < 0.01 else f" ({median * spacing[0] * spacing[1]:.2f} mm²)"
    sentences = [
        rng.choice(("There are {n} {name}, shown in {colour}.", "{n} {name} are outlined in {colour}.",
                    "The {colour} outlines mark {n} {name}.")).format(n=n, name=name, colour=colour),
        rng.choice(("Their median size is {size}, with {var} sizes (coefficient of variation {cv:.2f}).",
                    "Sizes are {var}: median {size}, coefficient of variation {cv:.2f}.")).format(size=size, var=variability, cv=cv),
        rng.choice(("They are {dist}, covering {share} of the image.",
                    "Spatially they are {dist}; together they cover {share} of the image.")).format(dist=distribution, share=_pct(f.share_image)),
    ]
    if contrast is not None:
        up, down, same = _INTENSITY_WORDS.get(modality, _DEFAULT_INTENSITY)
        f.intensity = up if contrast > 0.05 else down if contrast < -0.05 else same
        sentences.append(f"They appear {f.intensity} relative to the background.")
    f.text = " ".join(sentences)
    return Description(regions=[f], text=f.text)
