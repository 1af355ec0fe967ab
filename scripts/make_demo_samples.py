"""Regenerate the bundled demo images under rcmed/samples/demo/ (run from the repo root).

One image per modality family that `rcmed demo` shows, each with its true masks so the demo can
print Dice next to the answers: phantoms from seed 2027 (never used for training: the default
model trained on seeds 11 and 13 and was evaluated on seed 12) and the held-out tile r0c0 of the
real StarDist / DSB-2018 nuclei image (CC0; a test tile of the default model, see
rcmed/data/nuclei.py). Files keep their raw values (HU, uint16, float) so the demo reads them
through the same normalisation as any user file.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from rcmed.data.nuclei import nuclei_tiles, stardist_nuclei
from rcmed.data.synth import synth, synth_ct

OUT = Path(__file__).resolve().parents[1] / "rcmed" / "samples" / "demo"
SEED = 2027
# (file stem, modality, prompt): prompts name present targets, several at once, and one absent target
CASES = [
    ("ct_abdomen", "ct", "Segment the liver and the spleen."),
    ("mri_brain", "mri", "Segment the brain and the tumour."),
    ("xray_chest", "xray", "Segment the left lung and the right lung."),
    ("ultrasound_breast", "ultrasound", "Is there a breast lesion? Segment it."),
    ("dermoscopy_skin", "dermoscopy", "Segment the skin lesion."),
    ("endoscopy_colon", "endoscopy", "Find the polyp."),
    ("fundus_retina", "fundus", "Segment the optic disc."),
    ("pathology_glands", "pathology", "Segment the glands."),
]


def _nifti(path: Path, array: np.ndarray, lps_affine: np.ndarray) -> None:
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine
    nib.save(nib.Nifti1Image(array, ras), str(path))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    for k, (stem, mod, prompt) in enumerate(CASES):
        if mod == "ct":
            ph = synth_ct(np.random.default_rng([SEED, k]), size=128, volume=True, depth=10)
        else:
            ph = synth(mod, SEED + k, size=256)
        img = ph.image
        truth = {}
        if img.is_volume:
            _nifti(OUT / f"{stem}.nii.gz", img.array, img.affine)
            fname = f"{stem}.nii.gz"
            for name, m in ph.masks.items():
                tf = f"{stem}.truth.{name.replace(' ', '_')}.nii.gz"
                _nifti(OUT / tf, m.astype(np.uint8), img.affine)
                truth[name] = tf
        else:
            if img.rgb:
                fname = f"{stem}.png"
                Image.fromarray(img.array).save(OUT / fname)
            else:
                fname = f"{stem}.tif"
                tifffile.imwrite(OUT / fname, img.array)
            for name, m in ph.masks.items():
                tf = f"{stem}.truth.{name.replace(' ', '_')}.png"
                Image.fromarray(m.astype(np.uint8) * 255).save(OUT / tf)
                truth[name] = tf
        manifest.append({"file": fname, "modality": mod, "prompt": prompt, "truth": truth, "absent": ph.absent})
    image, labels = stardist_nuclei()
    tile = next(s for s, split in nuclei_tiles(image, labels, 128) if s.record.case_id.endswith("r0c0"))
    tifffile.imwrite(OUT / "microscopy_nuclei.tif", tile.image)
    Image.fromarray(((tile.instances > 0) * 255).astype(np.uint8)).save(OUT / "microscopy_nuclei.truth.nuclei.png")
    manifest.append({"file": "microscopy_nuclei.tif", "modality": "microscopy", "prompt": "Segment the nuclei.",
                     "truth": {"nuclei": "microscopy_nuclei.truth.nuclei.png"}, "absent": [],
                     "source": "StarDist wheel img2d.tif (2018 Data Science Bowl, CC0), held-out tile r0c0"})
    (OUT / "demo.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest)} demo cases to {OUT}")


if __name__ == "__main__":
    main()
