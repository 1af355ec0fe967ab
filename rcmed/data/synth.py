"""Synthetic phantoms with exact named masks for every modality RCMed claims, with no download.

`synth(modality, seed)` draws one sample: a `MedicalImage` in the modality's own units and
geometry (CT in HU with 0.8 mm pixels and an axial LPS orientation, fluorescence in 16-bit counts,
RGB photographs in uint8), boolean masks per named target, an instance label map where the
targets are countable objects (nuclei, cells), the body region, and the names of targets that were
drawn absent (so "not present" can be learned). Everything is vectorised numpy on broadcast
coordinate grids, seeded by `numpy.random.default_rng(seed)`, and cheap enough (tens of
milliseconds at 256²) that data generation never limits CPU training.

The anatomy is schematic, not realistic: positions, relative sizes, contrasts and textures follow
the real structure they imitate (liver on the patient's right, hypodense lesions, posterior
acoustic shadowing under a hypoechoic breast lesion, ...), so that shape-location-text relations
learned here point the right way. No phantom claims clinical fidelity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from rcmed.errors import RCMedInputError
from rcmed.io.image import MedicalImage, Modality, parse_modality

# LPS affine of an axial slice shown radiologically: rows run posterior (+y), columns to the
# patient's left (+x); the third column is the slice normal (superior).
_AXIAL = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Phantom:
    """One synthetic sample. `masks`: target name -> (H, W) or (D, H, W) bool, present targets
    only; `absent`: target names drawn absent; `instances`: int32 label map or None."""

    image: MedicalImage
    masks: dict[str, np.ndarray]
    body_region: str
    absent: list[str] = field(default_factory=list)
    instances: np.ndarray | None = None
    instance_target: str | None = None

    @property
    def modality(self) -> str:
        return self.image.modality.value


# ----------------------------------------------------------------------------- shape helpers


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast coordinates in [0, 1): yy (H, 1), xx (1, W)."""
    return (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h, (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w


def _ellipse(yy, xx, cy, cx, ry, rx, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside) of a rotated ellipse; angle in radians."""
    dy, dx = yy - cy, xx - cx
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)


def _blob(yy, xx, cy, cx, ry, rx, rng: np.random.Generator, irregular: float = 0.15, angle: float | None = None,
          harmonics: int = 5) -> np.ndarray:
    """A rotated ellipse whose radius wobbles with a few random harmonics (irregular > 0)."""
    ang = rng.uniform(0, math.pi) if angle is None else angle
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(ang), math.sin(ang)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((v / ry) ** 2 + (u / rx) ** 2)
    if irregular <= 0:
        return r <= 1.0
    theta = np.arctan2(v / ry, u / rx)
    wobble = np.ones_like(r)
    for k in range(2, 2 + harmonics):
        wobble = wobble + (irregular / k**0.7) * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    return r <= wobble


def _noise_field(h: int, w: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise (zero mean, unit-ish std) with features about `scale` pixels across."""
    small = rng.standard_normal((h // scale + 3, w // scale + 3)).astype(np.float32)
    big = ndi.zoom(small, scale, order=1, prefilter=False)
    return big[:h, :w]


def _local(shape: tuple[int, int], cy: float, cx: float, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """A crop window around (cy, cx) pixels and its pixel coordinates (for small objects)."""
    h, w = shape
    r0, r1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
    c0, c1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
    yy = np.arange(r0, r1, dtype=np.float32)[:, None]
    xx = np.arange(c0, c1, dtype=np.float32)[None, :]
    return slice(r0, r1), slice(c0, c1), yy, xx


def _image(array: np.ndarray, modality: Modality, spacing: tuple[float, float], axial: bool = False,
           rgb: bool = False, **meta: str | int | float) -> MedicalImage:
    aff = np.eye(4)
    if axial:
        aff[:3, :3] = _AXIAL @ np.diag([spacing[0], spacing[1], 1.0])
    else:
        aff[0, 0], aff[1, 1] = spacing
    return MedicalImage(array=array, affine=aff, modality=modality, rgb=rgb, spacing_known=True,
                        orientation_known=axial, metadata={"format": "synthetic", **meta})


def _instances(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, rng: np.random.Generator,
               irregular: float = 0.12) -> np.ndarray:
    """Label map of small irregular ellipses; later objects are drawn over earlier ones, so
    touching and overlapping objects stay disjoint in the label map (as in annotated data)."""
    lab = np.zeros(shape, np.int32)
    k = 0
    for (cy, cx), (ry, rx) in zip(centres, radii, strict=True):
        rs, cs, yy, xx = _local(shape, cy, cx, max(ry, rx) * (1 + irregular) + 1)
        m = _blob(yy, xx, cy, cx, ry, rx, rng, irregular=irregular, harmonics=3)
        if m.sum() < 4:
            continue
        k += 1
        lab[rs, cs][m] = k
    # A later object can cut an earlier one in pieces; annotated instances are whole, so keep each
    # label's largest connected piece, drop the rest, and relabel 1..N without gaps.
    from skimage.measure import label as cc_label

    pieces = cc_label(lab, connectivity=1, background=0)
    sizes = np.bincount(pieces.ravel())
    owner = np.zeros(sizes.size, np.int64)
    owner[pieces.ravel()] = lab.ravel()
    order = np.lexsort((sizes[1:], owner[1:])) + 1  # by owner, then size: the last of each owner is its largest
    largest = np.zeros(sizes.size, bool)
    last_of_owner = np.r_[owner[order][1:] != owner[order][:-1], True]
    largest[order[last_of_owner]] = True
    kept = np.where(largest[pieces], lab, 0)
    ids = np.unique(kept)
    ids = ids[ids > 0]
    remap = np.zeros(k + 1, np.int32)
    remap[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return remap[kept]


def _maybe(rng: np.random.Generator, p_present: float) -> bool:
    return bool(rng.random() < p_present)


# ----------------------------------------------------------------------------- CT


def _extent(z: float, centre: float, half: float) -> float:
    """Cross-section scale (0 outside) of an organ spanning `centre` +- `half` along z in [-1, 1]."""
    t = (z - centre) / half
    return math.sqrt(1 - t * t) if abs(t) < 1 else 0.0


def _ct_slice(size: int, rng: np.random.Generator, z: float = 0.0, params: dict | None = None) -> tuple[np.ndarray, dict, list]:
    """One axial abdominal CT slice in HU. `z` in [-1, 1] (inferior to superior) places the slice
    in a volume: each organ spans its own z range, and organ outlines are drawn from per-organ
    seeds so that they stay coherent from slice to slice."""
    p = params if params is not None else _ct_params(rng)

    def shape_rng(k: int) -> np.random.Generator:
        return np.random.default_rng([p["shape_seed"], k])

    yy, xx = _grid(size, size)
    masks: dict[str, np.ndarray] = {}
    body_r = _ellipse(yy, xx, 0.5, 0.5, p["body_ry"], p["body_rx"])
    body = body_r <= 1
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = -100.0  # subcutaneous fat
    inner = body_r <= 0.9
    hu[inner] = 40.0  # muscle wall
    cavity = body_r <= 0.82
    hu[cavity] = -60.0 + 25.0 * _noise_field(size, size, 12, rng)[cavity]  # fat and bowel mixture
    masks["body"] = body
    vy = 0.5 + 0.26 * p["body_ry"] / 0.34
    vert = _ellipse(yy, xx, vy, 0.5, 0.07, 0.075) <= 1
    hu[vert] = 700.0
    hu[_ellipse(yy, xx, vy, 0.5, 0.05, 0.055) <= 1] = 250.0
    masks["vertebra"] = vert
    aorta = _ellipse(yy, xx, 0.5 + 0.13 * p["body_ry"] / 0.34, 0.46, 0.028, 0.028) <= 1
    hu[aorta] = p["aorta_hu"]
    masks["aorta"] = aorta
    liver = np.zeros((size, size), bool)
    f = _extent(z, 0.35, 0.75)
    if f > 0.1:
        lr = p["liver_scale"] * f
        liver = _blob(yy, xx, p["liver_cy"], p["liver_cx"], 0.2 * lr, 0.17 * lr, shape_rng(0), irregular=0.08,
                      angle=p["liver_angle"]) & cavity
        hu[liver] = p["liver_hu"]
        masks["liver"] = liver
    f = _extent(z, 0.4, 0.45)
    if p["spleen"] and f > 0.1:
        spleen = _blob(yy, xx, 0.5, 0.78, 0.09 * f, 0.05 * f, shape_rng(1), irregular=0.1, angle=1.0) & cavity & ~liver
        hu[spleen] = 48.0
        masks["spleen"] = spleen
    f = _extent(z, -0.2, 0.45)
    if f > 0.1:
        kid = np.zeros((size, size), bool)
        for j, cx in enumerate((0.33, 0.67)):
            kid |= _blob(yy, xx, 0.6, cx, 0.065 * f, 0.045 * f, shape_rng(2 + j), irregular=0.05, angle=1.2 if cx < 0.5 else -1.2)
        kid &= cavity & ~liver
        hu[kid] = 150.0  # contrast-enhanced cortex
        masks["kidneys"] = kid
    lesions = np.zeros((size, size), bool)
    for j, (cy, cx, r, zc) in enumerate(p["lesions"]):
        fl = _extent(z, zc, max(r * 6, 0.15)) if params is not None else 1.0
        if fl > 0.2:
            lesions |= _blob(yy, xx, cy, cx, r * fl, r * fl * 1.1, shape_rng(10 + j), irregular=0.12)
    lesions &= liver
    if lesions.any():
        hu[lesions] = p["lesion_hu"]
        masks["liver lesion"] = lesions
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    hu[~body] = -1000.0 + rng.normal(0.0, 5.0, int((~body).sum())).astype(np.float32)
    absent = [t for t in ("liver", "liver lesion", "spleen", "kidneys") if t not in masks]
    return hu, masks, absent


def _ct_params(rng: np.random.Generator) -> dict:
    n_les = int(rng.choice([0, 1, 1, 2, 3]))
    liver_cy, liver_cx = 0.42 + rng.uniform(-0.04, 0.04), 0.3 + rng.uniform(-0.03, 0.03)
    return {
        "shape_seed": int(rng.integers(2**31)),
        "body_ry": rng.uniform(0.3, 0.36), "body_rx": rng.uniform(0.42, 0.47),
        "liver_cy": liver_cy, "liver_cx": liver_cx, "liver_angle": rng.uniform(-0.5, 0.2),
        "liver_scale": rng.uniform(0.85, 1.15), "liver_hu": rng.uniform(55, 70),
        "aorta_hu": rng.uniform(120, 220), "spleen": _maybe(rng, 0.85),
        "lesions": [(liver_cy + rng.uniform(-0.08, 0.08), liver_cx + rng.uniform(-0.06, 0.06), rng.uniform(0.015, 0.045),
                     rng.uniform(0.0, 0.6)) for _ in range(n_les)],
        "lesion_hu": rng.uniform(5, 30),
    }


def synth_ct(rng: np.random.Generator, size: int = 256, volume: bool = False, depth: int = 32) -> Phantom:
    if not volume:
        hu, masks, absent = _ct_slice(size, rng, z=rng.uniform(0.0, 0.5))
        return Phantom(_image(np.round(hu).astype(np.int16), Modality.CT, (0.8, 0.8), axial=True), masks, "abdomen", absent)
    params = _ct_params(rng)
    return _volume(lambda z: _ct_slice(size, rng, z, params), depth, Modality.CT, (2.5, 0.8, 0.8), "abdomen", {})


def _volume(slice_fn: Callable[[float], tuple[np.ndarray, dict, list]], depth: int, modality: Modality,
            spacing: tuple[float, float, float], region: str, meta: dict) -> Phantom:
    """Stack `slice_fn(z)` for z from inferior (-1) to superior (+1) into an axial volume
    (slice, row, column) = (superior, posterior, patient left) in LPS."""
    slices, stack, absent_sets = [], {}, []
    for k in range(depth):
        img, masks, absent = slice_fn(-1 + 2 * (k + 0.5) / depth)
        slices.append(np.round(img).astype(np.int16))
        for name, m in masks.items():
            stack.setdefault(name, np.zeros((depth, *m.shape), bool))[k] = m
        absent_sets.append(set(absent))
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = [0, 0, spacing[0]], [0, spacing[1], 0], [spacing[2], 0, 0]
    img = MedicalImage(array=np.stack(slices), affine=aff, modality=modality, spacing_known=True, orientation_known=True,
                       metadata={"format": "synthetic", **meta})
    # absent from the whole volume: absent on every slice and never drawn on any
    absent = sorted(set.intersection(*absent_sets) - set(stack)) if absent_sets else []
    return Phantom(img, stack, region, absent)


# ----------------------------------------------------------------------------- MRI brain


def _mri_slice(size: int, rng: np.random.Generator, p: dict, z: float = 0.0) -> tuple[np.ndarray, dict, list]:
    def shape_rng(k: int) -> np.random.Generator:  # per-structure outline seed: coherent across slices
        return np.random.default_rng([p["shape_seed"], k])

    yy, xx = _grid(size, size)
    t2 = p["t2"]
    fade = math.sqrt(max(0.0, 1 - z * z))
    head = _ellipse(yy, xx, 0.5, 0.5, 0.42 * (0.5 + 0.5 * fade), 0.35 * (0.5 + 0.5 * fade)) <= 1
    brain = _blob(yy, xx, 0.5, 0.5, 0.36 * (0.45 + 0.55 * fade), 0.29 * (0.45 + 0.55 * fade), shape_rng(0), irregular=0.03, angle=0.0)
    masks = {"head": head, "brain": brain & head}
    csf, gm, wm, scalp = (900, 500, 350, 650) if t2 else (150, 450, 650, 700)
    img = np.zeros((size, size), np.float32)
    img[head] = scalp
    skull = head & ~(_ellipse(yy, xx, 0.5, 0.5, 0.39 * (0.5 + 0.5 * fade), 0.32 * (0.5 + 0.5 * fade)) <= 1)
    img[skull] = 60
    img[brain] = gm
    white = brain & (_ellipse(yy, xx, 0.5, 0.5, 0.28 * fade + 0.01, 0.22 * fade + 0.01) <= 1)
    img[white] = wm + 40 * _noise_field(size, size, 10, rng)[white]
    absent = []
    if abs(z) < 0.6:
        vent = np.zeros((size, size), bool)
        for j, (cx, ang) in enumerate(((0.46, -0.35), (0.54, 0.35))):
            vent |= _blob(yy, xx, 0.47, cx, 0.09 * p["vent_scale"] * fade, 0.025 * p["vent_scale"], shape_rng(1 + j),
                          irregular=0.05, angle=ang)
        vent &= brain
        img[vent] = csf
        masks["ventricles"] = vent
    if p["tumour"] and abs(z - p["tz"]) < p["tr"] * 2.5:
        s = math.sqrt(max(0.0, 1 - ((z - p["tz"]) / (p["tr"] * 2.5)) ** 2))
        oedema = _blob(yy, xx, p["ty"], p["tx"], p["tr"] * 1.9 * s + 0.005, p["tr"] * 1.6 * s + 0.005, shape_rng(3), irregular=0.25) & brain
        tumour = _blob(yy, xx, p["ty"], p["tx"], p["tr"] * s + 0.003, p["tr"] * 0.9 * s + 0.003, shape_rng(4), irregular=0.18) & brain
        img[oedema] = 800 if t2 else 300
        img[tumour] = 600 if t2 else 200
        if tumour.any():
            masks["tumour"] = tumour
            masks["oedema"] = oedema & ~tumour
    if "tumour" not in masks:
        absent = ["tumour", "oedema"]
    # Rician-like noise: magnitude of complex Gaussian noise added to the signal.
    sigma = 18.0
    img = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape)).astype(np.float32)
    return img, masks, absent


def synth_mri(rng: np.random.Generator, size: int = 256, volume: bool = False, depth: int = 24) -> Phantom:
    p = {"shape_seed": int(rng.integers(2**31)), "t2": _maybe(rng, 0.5), "tumour": _maybe(rng, 0.8), "ty": 0.5 + rng.uniform(-0.15, 0.15),
         "tx": 0.5 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.18), "tr": rng.uniform(0.03, 0.07),
         "tz": rng.uniform(-0.3, 0.3), "vent_scale": rng.uniform(0.8, 1.2)}
    contrast = "t2" if p["t2"] else "t1"
    if not volume:
        img, masks, absent = _mri_slice(size, rng, {**p, "tz": 0.0})
        return Phantom(_image(np.round(img).astype(np.int16), Modality.MRI, (0.9, 0.9), axial=True, contrast=contrast),
                       masks, "brain", absent)
    return _volume(lambda z: _mri_slice(size, rng, p, z), depth, Modality.MRI, (3.0, 0.9, 0.9), "brain", {"contrast": contrast})


# ----------------------------------------------------------------------------- chest X-ray


def synth_xray(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    img = 2600 - 900 * (np.abs(xx - 0.5) * 2) ** 3 + 150 * _noise_field(size, size, 24, rng)
    img = np.broadcast_to(img, (size, size)).astype(np.float32).copy()
    lungs = {}
    # Patient's right lung is on the image left (PA view shown as if facing the patient).
    for name, cx, sgn in (("right lung", 0.3, -1), ("left lung", 0.7, 1)):
        # tall lobes, apices tilted towards the midline
        lung = _blob(yy, xx, 0.47 + rng.uniform(-0.02, 0.02), cx, 0.3 * rng.uniform(0.9, 1.1), 0.14 * rng.uniform(0.9, 1.1),
                     rng, irregular=0.06, angle=sgn * 0.12)
        lungs[name] = lung & (yy > 0.16)
    heart = _blob(yy, xx, 0.62, 0.55, 0.12 * rng.uniform(0.9, 1.15), 0.14 * rng.uniform(0.9, 1.2), rng, irregular=0.05, angle=0.3)
    masks: dict[str, np.ndarray] = {}
    for name, lung in lungs.items():
        lung &= ~heart
        img[lung] -= 1500 - 120 * _noise_field(size, size, 6, rng)[lung]  # aerated lung, vessel markings
        masks[name] = lung
    img[heart] += 350
    masks["heart"] = heart
    # ribs: bright curved bands over the lungs
    for k in range(8):
        yc = 0.2 + 0.085 * k
        band = np.abs(yy - yc - 0.12 * (xx - 0.5) ** 2 * 4) < 0.012
        img += np.where(band & (lungs["right lung"] | lungs["left lung"]), 350.0, 0.0)
    absent = []
    if _maybe(rng, 0.5):
        side = rng.choice(list(lungs))
        ys, xs = np.nonzero(masks[side])
        i = rng.integers(len(ys))
        nod = _blob(yy, xx, (ys[i] + 0.5) / size, (xs[i] + 0.5) / size, rng.uniform(0.015, 0.035), rng.uniform(0.015, 0.035), rng, irregular=0.1)
        nod &= masks[side]
        img[nod] += 700
        masks["nodule"] = nod
    else:
        absent.append("nodule")
    if _maybe(rng, 0.3):
        side = rng.choice(list(lungs))
        lung = masks[side]
        cx = 0.22 if side == "right lung" else 0.78
        ptx = lung & (_ellipse(yy, xx, 0.3, cx, 0.2, 0.12) <= 1)
        img[ptx] = np.minimum(img[ptx], 900 + 30 * rng.standard_normal(int(ptx.sum())))  # no lung markings
        masks["pneumothorax"] = ptx
    else:
        absent.append("pneumothorax")
    img = ndi.gaussian_filter(img, 0.8) + rng.normal(0, 25, img.shape)
    return Phantom(_image(np.clip(img, 0, 4095).astype(np.uint16), Modality.XRAY, (0.7, 0.7), view="PA"), masks, "chest", absent)


# ----------------------------------------------------------------------------- ultrasound


def synth_ultrasound(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    # Layers: skin (bright), subcutaneous fat (dark lobules), glandular tissue (brighter), muscle.
    tissue = np.where(yy < 0.05, 1.4, np.where(yy < 0.3, 0.55, np.where(yy < 0.8, 0.9, 0.7))).astype(np.float32)
    tissue = np.broadcast_to(tissue, (size, size)) * (1 + 0.25 * _noise_field(size, size, 14, rng))
    masks: dict[str, np.ndarray] = {}
    absent = []
    if _maybe(rng, 0.8):
        cy, cx = rng.uniform(0.4, 0.62), rng.uniform(0.25, 0.75)
        ry, rx = rng.uniform(0.06, 0.12), rng.uniform(0.08, 0.18)  # wider than tall: typical benign; taller: suspicious
        lesion = _blob(yy, xx, cy, cx, ry, rx, rng, irregular=rng.uniform(0.05, 0.3), angle=rng.uniform(-0.3, 0.3))
        tissue = np.where(lesion, 0.12, tissue)
        # posterior acoustic shadowing: attenuation below the lesion, within its width
        cols = lesion.any(axis=0)
        bottom = np.where(cols, size - np.argmax(lesion[::-1], axis=0), size)
        rows = np.arange(size)[:, None]
        shadow = (rows > bottom[None, :]) & cols[None, :]
        tissue = np.where(shadow, tissue * 0.35, tissue)
        masks["breast lesion"] = lesion
    else:
        absent.append("breast lesion")
    # Fully developed speckle: Rayleigh-distributed magnitude, slightly smoothed along the beam.
    speckle = np.hypot(rng.standard_normal((size, size)), rng.standard_normal((size, size))).astype(np.float32)
    speckle = ndi.uniform_filter1d(speckle, 3, axis=0)
    depth_gain = 1.0 - 0.35 * yy
    img = np.clip(tissue * speckle * depth_gain * 110, 0, 255).astype(np.uint8)
    return Phantom(_image(img, Modality.ULTRASOUND, (0.2, 0.2)), masks, "breast", absent)


# ----------------------------------------------------------------------------- PET


def synth_pet(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    body = _ellipse(yy, xx, 0.5, 0.5, rng.uniform(0.3, 0.36), rng.uniform(0.4, 0.46)) <= 1
    suv = np.where(body, 0.8, 0.02).astype(np.float32)
    liver = _blob(yy, xx, 0.42, 0.3, 0.17, 0.14, rng, irregular=0.08) & body
    suv[liver] = 2.2
    masks: dict[str, np.ndarray] = {"body": body}
    hot = np.zeros((size, size), bool)
    n = int(rng.choice([0, 1, 2, 3, 4]))
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8)
        les = _blob(yy, xx, cy, cx, rng.uniform(0.015, 0.04), rng.uniform(0.015, 0.04), rng, irregular=0.15) & body
        suv[les] = rng.uniform(5, 15)
        hot |= les
    if hot.any():
        masks["hot lesions"] = hot
    absent = [] if hot.any() else ["hot lesions"]
    # ~6 mm FWHM blur at 2 mm pixels, then Poisson counting noise.
    blurred = ndi.gaussian_filter(suv, 1.3)
    counts = rng.poisson(np.clip(blurred, 0, None) * 40).astype(np.float32) / 40
    return Phantom(_image(counts, Modality.PET, (2.0, 2.0), axial=True), masks, "whole body", absent)


# ----------------------------------------------------------------------------- pathology (H&E)


def synth_pathology(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    stroma = 0.5 + 0.5 * _noise_field(size, size, 5, rng)
    # eosin-pink stroma
    rgb = np.stack([235 - 25 * stroma, 170 - 45 * stroma, 200 - 25 * stroma], axis=-1)
    glands = np.zeros((size, size), bool)
    centres, radii = [], []
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        ry, rx = rng.uniform(0.07, 0.13), rng.uniform(0.07, 0.13)
        g = _blob(yy, xx, cy, cx, ry, rx, rng, irregular=0.12)
        lumen = _blob(yy, xx, cy, cx, ry * 0.55, rx * 0.55, rng, irregular=0.1)
        glands |= g
        rgb[lumen] = (245, 240, 245)
        # epithelial nuclei lining the gland
        for t in np.linspace(0, 2 * math.pi, int(rng.integers(14, 24)), endpoint=False):
            centres.append((size * (cy + 0.8 * ry * math.sin(t)), size * (cx + 0.8 * rx * math.cos(t))))
            radii.append((rng.uniform(2.5, 4), rng.uniform(3.5, 5.5)))
    n_free = int(rng.integers(20, 120))
    centres += list(zip(rng.uniform(4, size - 4, n_free), rng.uniform(4, size - 4, n_free), strict=True))
    radii += list(zip(rng.uniform(2.5, 4.5, n_free), rng.uniform(3, 6, n_free), strict=True))
    lab = _instances((size, size), np.array(centres), np.array(radii), rng, irregular=0.15)
    nuc = lab > 0
    shade = rng.uniform(0.8, 1.1, lab.max() + 1)[lab]
    rgb[nuc] = np.stack([95 * shade[nuc], 60 * shade[nuc], 140 * shade[nuc]], axis=-1)  # haematoxylin purple
    rgb += rng.normal(0, 6, rgb.shape)
    masks = {"glands": glands} if glands.any() else {}
    absent = [] if glands.any() else ["glands"]
    img = _image(np.clip(rgb, 0, 255).astype(np.uint8), Modality.PATHOLOGY, (0.0005, 0.0005), rgb=True, stain="H&E")
    return Phantom(img, masks, "colon", absent, instances=lab, instance_target="nuclei")


# ----------------------------------------------------------------------------- fluorescence microscopy


def synth_microscopy(rng: np.random.Generator, size: int = 256) -> Phantom:
    density = rng.choice(["sparse", "medium", "dense"])
    n = {"sparse": rng.integers(8, 30), "medium": rng.integers(30, 90), "dense": rng.integers(90, 220)}[density]
    if density == "dense" or _maybe(rng, 0.3):
        # clusters: centres drawn around a few seeds, so nuclei touch and overlap
        seeds = rng.uniform(20, size - 20, (int(rng.integers(2, 6)), 2))
        pick = seeds[rng.integers(len(seeds), size=n)]
        centres = np.clip(pick + rng.normal(0, size * 0.08, (n, 2)), 4, size - 4)
    else:
        centres = rng.uniform(6, size - 6, (n, 2))
    radii = rng.uniform(3.5, 7.5, (n, 2))
    lab = _instances((size, size), centres, radii, rng, irregular=0.1)
    brightness = rng.uniform(0.5, 1.0, lab.max() + 1)
    brightness[0] = 0.0
    signal = brightness[lab]
    signal = ndi.gaussian_filter(signal, 1.0) * 3000 + 150 + 40 * _noise_field(size, size, 32, rng)
    img = rng.poisson(np.clip(signal, 0, None)).astype(np.uint16)
    return Phantom(_image(img, Modality.MICROSCOPY, (0.00065, 0.00065), density=str(density)), {}, "cells", [],
                   instances=lab, instance_target="nuclei")


# ----------------------------------------------------------------------------- dermoscopy


def synth_dermoscopy(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    tone = rng.uniform(0.7, 1.0)
    tex = _noise_field(size, size, 8, rng)
    rgb = np.stack([225 * tone + 8 * tex, 175 * tone + 8 * tex, 150 * tone + 8 * tex], axis=-1)
    masks: dict[str, np.ndarray] = {}
    absent = []
    if _maybe(rng, 0.9):
        lesion = _blob(yy, xx, 0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(-0.08, 0.08), rng.uniform(0.15, 0.3),
                       rng.uniform(0.15, 0.3), rng, irregular=rng.uniform(0.1, 0.35), harmonics=7)
        var = _noise_field(size, size, 10, rng)  # colour variegation
        brown = np.stack([120 + 25 * var, 75 + 15 * var, 50 + 10 * var], axis=-1)
        rgb[lesion] = brown[lesion]
        masks["skin lesion"] = lesion
    else:
        absent.append("skin lesion")
    # hairs: dark smooth curves drawn over everything (not part of the lesion mask)
    hair = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(0, 9))):
        y, x = rng.uniform(0, size, 2)
        ang = rng.uniform(0, 2 * math.pi)
        curl = rng.uniform(-0.03, 0.03)
        for _ in range(int(rng.integers(60, 200))):
            yi, xi = int(y), int(x)
            if 0 <= yi < size and 0 <= xi < size:
                hair[yi, xi] = True
            ang += curl
            y += math.sin(ang)
            x += math.cos(ang)
    hair = _dilate_cross(hair)
    rgb[hair] = (45, 30, 25)
    # dermoscope field: dark vignette outside a circle
    vign = _ellipse(yy, xx, 0.5, 0.5, 0.62, 0.62) > 1
    rgb[np.broadcast_to(vign, (size, size))] *= 0.2
    rgb += rng.normal(0, 4, rgb.shape)
    return Phantom(_image(np.clip(rgb, 0, 255).astype(np.uint8), Modality.DERMOSCOPY, (0.02, 0.02), rgb=True), masks, "skin", absent)


def _dilate_cross(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] |= m[:-1]
    out[:, 1:] |= m[:, :-1]
    return out


# ----------------------------------------------------------------------------- endoscopy


def synth_endoscopy(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    folds = 0.5 + 0.5 * np.sin(2 * math.pi * (rng.uniform(2, 4) * np.hypot(yy - 0.5, xx - 0.5) + rng.uniform(0, 1)))
    light = 1.0 - 0.9 * np.hypot(yy - 0.5, xx - 0.5) ** 1.5  # bright centre, dark lumen edges
    base = (0.75 + 0.25 * folds) * light + 0.08 * _noise_field(size, size, 10, rng)
    rgb = np.stack([230 * base, 120 * base, 105 * base], axis=-1)
    masks: dict[str, np.ndarray] = {}
    absent = []
    if _maybe(rng, 0.75):
        cy, cx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        ry, rx = rng.uniform(0.07, 0.17), rng.uniform(0.07, 0.17)
        polyp = _blob(yy, xx, cy, cx, ry, rx, rng, irregular=0.1)
        # raised: shaded like a dome lit from the upper left
        r = np.clip(_ellipse(yy, xx, cy, cx, ry, rx), 0, 1)
        dome = np.sqrt(1 - r**2) * (1 + 0.6 * ((xx - cx) / rx * -0.5 + (yy - cy) / ry * -0.5))
        colour = np.stack([215 + 30 * dome, 110 + 25 * dome, 100 + 20 * dome], axis=-1)
        rgb[polyp] = colour[polyp]
        masks["polyp"] = polyp
    else:
        absent.append("polyp")
    # specular highlights: small saturated white spots (not part of any mask)
    for _ in range(int(rng.integers(3, 12))):
        cy, cx = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size
        rs, cs, ly, lx = _local((size, size), cy, cx, 4)
        spot = (ly - cy) ** 2 + (lx - cx) ** 2 <= rng.uniform(1.5, 9)
        rgb[rs, cs][spot] = (255, 255, 255)
    fov = np.broadcast_to(_ellipse(yy, xx, 0.5, 0.5, 0.52, 0.52) > 1, (size, size))
    rgb[fov] = 0
    for m in masks.values():
        m &= ~fov
    rgb += rng.normal(0, 3, rgb.shape)
    return Phantom(_image(np.clip(rgb, 0, 255).astype(np.uint8), Modality.ENDOSCOPY, (0.1, 0.1), rgb=True), masks, "colon", absent)


# ----------------------------------------------------------------------------- fundus


def _vessel_tree(size: int, root: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Vessels as branching random walks from the optic disc, thinning with each generation."""
    canvas = np.zeros((size, size), np.uint8)
    stack = [(root[0], root[1], rng.uniform(0, 2 * math.pi), 3, 0) for _ in range(4)]
    stack = [(y, x, math.pi / 2 * k + rng.uniform(-0.4, 0.4), w, g) for k, (y, x, _, w, g) in enumerate(stack)]
    while stack:
        y, x, ang, width, gen = stack.pop()
        length = int(size * rng.uniform(0.12, 0.25))
        for step in range(length):
            ang += rng.normal(0, 0.06)
            y += math.sin(ang)
            x += math.cos(ang)
            yi, xi = int(y), int(x)
            if not (1 <= yi < size - 1 and 1 <= xi < size - 1):
                break
            canvas[yi, xi] = max(canvas[yi, xi], width)
            if gen < 3 and step == length // 2:
                stack.append((y, x, ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), max(width - 1, 1), gen + 1))
        else:
            if gen < 3:
                stack.append((y, x, ang + rng.uniform(-0.5, 0.5), max(width - 1, 1), gen + 1))
    vessels = canvas > 0
    thick = canvas >= 2
    vessels |= _dilate_cross(thick)
    vessels |= ndi.binary_dilation(canvas >= 3)
    return vessels


def synth_fundus(rng: np.random.Generator, size: int = 256) -> Phantom:
    yy, xx = _grid(size, size)
    fov = _ellipse(yy, xx, 0.5, 0.5, 0.47, 0.47) <= 1
    r = np.clip(_ellipse(yy, xx, 0.5, 0.5, 0.47, 0.47), 0, 1)
    shade = (1 - 0.45 * r**2) * (1 + 0.05 * _noise_field(size, size, 16, rng))
    rgb = np.stack([200 * shade, 90 * shade, 35 * shade], axis=-1)
    side = rng.choice([-1, 1])  # left or right eye: disc nasal
    dcy, dcx = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + side * rng.uniform(0.18, 0.26)
    disc = _blob(yy, xx, dcy, dcx, rng.uniform(0.06, 0.08), rng.uniform(0.055, 0.07), rng, irregular=0.04) & fov
    rgb[disc] = (250, 215, 150)
    vessels = _vessel_tree(size, (dcy * size, dcx * size), rng) & fov
    rgb[vessels & ~disc] *= np.array([0.55, 0.35, 0.35])
    masks = {"optic disc": disc, "vessels": vessels}
    lesions = np.zeros((size, size), bool)
    absent = []
    if _maybe(rng, 0.6):
        for _ in range(int(rng.integers(1, 10))):
            cy, cx = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size
            rs, cs, ly, lx = _local((size, size), cy, cx, 4)
            spot = (ly - cy) ** 2 + (lx - cx) ** 2 <= rng.uniform(2, 12)
            exudate = rng.random() < 0.4
            rgb[rs, cs][spot] = (240, 220, 90) if exudate else (120, 20, 15)  # hard exudate or microaneurysm/haemorrhage
            lesions[rs, cs] |= spot
        lesions &= fov & ~disc
    if lesions.any():
        masks["lesions"] = lesions
    else:
        absent.append("lesions")
    rgb[~fov] = 0
    rgb += rng.normal(0, 3, rgb.shape)
    return Phantom(_image(np.clip(rgb, 0, 255).astype(np.uint8), Modality.FUNDUS, (0.012, 0.012), rgb=True), masks, "eye", absent)


# ----------------------------------------------------------------------------- API

GENERATORS: dict[str, Callable[..., Phantom]] = {
    "ct": synth_ct,
    "mri": synth_mri,
    "xray": synth_xray,
    "ultrasound": synth_ultrasound,
    "pet": synth_pet,
    "pathology": synth_pathology,
    "microscopy": synth_microscopy,
    "dermoscopy": synth_dermoscopy,
    "endoscopy": synth_endoscopy,
    "fundus": synth_fundus,
}
VOLUME_MODALITIES = ("ct", "mri")


def synth(modality: str, seed: int, size: int = 256, volume: bool = False) -> Phantom:
    """One phantom of `modality` (see `GENERATORS`), reproducible from `seed`.

    `volume=True` gives a 3-D volume (CT and MRI only). `size` is the in-plane side in pixels.
    """
    mod = parse_modality(modality).value
    if mod not in GENERATORS:
        raise RCMedInputError("modality", f"no phantom for {modality!r}; choose one of {sorted(GENERATORS)}")
    if not 32 <= size <= 4096:
        raise RCMedInputError("size", f"phantom size must be 32..4096 pixels, got {size}")
    rng = np.random.default_rng([seed, sorted(GENERATORS).index(mod)])
    if volume:
        if mod not in VOLUME_MODALITIES:
            raise RCMedInputError("volume", f"3-D phantoms exist for {VOLUME_MODALITIES}, not {mod}")
        return GENERATORS[mod](rng, size=size, volume=True)
    return GENERATORS[mod](rng, size=size)


def phantom_samples(phantom: Phantom, case_id: str, source: str = "synth") -> list:
    """Store samples from one phantom: the 2-D image itself, or each axial slice of a volume
    (every slice is kept: organ ends and empty slices are the negatives a model needs)."""
    from rcmed.data.store import Record, Sample, make_key
    from rcmed.io.slices import to_slices

    img = phantom.image
    names = list(phantom.masks)
    if img.is_volume:
        stack = to_slices(img)
        mask_stacks = {n: to_slices(img.with_array(m)).slices for n, m in phantom.masks.items()}
        planes = [(k, stack.slice_image(k), {n: s[k] for n, s in mask_stacks.items()}) for k in range(len(stack))]
    else:
        planes = [(None, img, phantom.masks)]
    out = []
    for k, plane, masks in planes:
        present = [n for n in names if masks[n].any()]
        absent = sorted(set(phantom.absent) | {n for n in names if n not in present})
        rec = Record(
            id=make_key(source, case_id, None if k is None else f"s{k:04d}"), case_id=case_id, modality=phantom.modality,
            targets=present, absent=absent, instance_target=phantom.instance_target, body_region=phantom.body_region,
            source=source, spacing=list(plane.spacing) if plane.spacing else None, orientation=plane.orientation,
            slice_index=k,
        )
        mask_arr = np.stack([masks[n] for n in present]) if present else np.zeros((0, *plane.spatial_shape), bool)
        out.append(Sample(record=rec, image=np.ascontiguousarray(plane.array), masks=mask_arr, instances=phantom.instances))
    return out


def synth_store(out: str, modality: str, n: int, seed: int = 0, size: int = 256, volume: bool = False,
                progress: bool = True) -> int:
    """Write `n` phantoms (`modality` or "all", cycling through every modality) into a new store.
    Returns the number of records (a volume gives one record per slice)."""
    from tqdm import tqdm

    from rcmed.data.store import StoreWriter

    if n <= 0:
        raise RCMedInputError("--n", f"number of phantoms must be positive, got {n}")
    mods = (list(VOLUME_MODALITIES) if volume else sorted(GENERATORS)) if modality == "all" else [parse_modality(modality).value]
    records = 0
    with StoreWriter(out) as writer, tqdm(total=n, desc="synth", unit="img", disable=not progress, leave=False) as bar:
        for i in range(n):
            mod = mods[i % len(mods)]
            ph = synth(mod, seed * 1_000_003 + i, size=size, volume=volume)
            for sample in phantom_samples(ph, f"{mod}-{seed}-{i:07d}", source=f"synth-{mod}"):
                writer.add(sample)
                records += 1
            bar.update(1)
    return records
