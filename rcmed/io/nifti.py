"""NIfTI reader (nibabel). The array keeps the file's voxel order (i, j, k) so that a mask written
back with the same affine overlays the source exactly; the RAS affine is turned into LPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcmed.errors import CorruptFileError, RCMedInputError
from rcmed.io.image import LPS_TO_RAS, MedicalImage, Modality
from rcmed.io.limits import ReadLimits, check_finite, check_shape

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path: Path, modality: Modality, limits: ReadLimits) -> MedicalImage:
    """`.nii`/`.nii.gz`, NIfTI or Analyze `.hdr`/`.img` pairs and FreeSurfer `.mgz`/`.mgh` (all read by
    nibabel) -> (I, J[, K]) array in scaled units (scl_slope/inter applied)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        check_shape(path, shape, limits)
        # Trailing singleton dims (a 2-D image saved as X x Y x 1) are kept as a 1-slice volume;
        # a 4-D series keeps its first volume only.
        if len(shape) > 3:
            if any(s != 1 for s in shape[3:]):
                raise CorruptFileError(path.name, f"4-D image {shape} (time or channels); split it into 3-D volumes first")
        data = np.asanyarray(img.dataobj)
        data = data.reshape(shape[:3]) if len(shape) > 3 else data
        if data.dtype.kind == "f" or img.dataobj.slope != 1 or img.dataobj.inter != 0:
            data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(data.shape)
        affine_ras = img.affine
        kind = "mgh" if isinstance(img, nib.MGHImage) else "nifti" if isinstance(img, (nib.Nifti1Pair, nib.Nifti2Pair)) \
            else "analyze"
        # MGH always stores its voxel-to-RAS matrix; Analyze 7.5 has no reliable orientation
        sform_code = int(img.header.get("sform_code", 0)) if kind == "nifti" else int(kind == "mgh")
        qform_code = int(img.header.get("qform_code", 0)) if kind == "nifti" else 0
        zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    except RCMedInputError:
        raise
    except FileNotFoundError as exc:  # a .hdr whose .img (or the reverse) is not beside it
        raise CorruptFileError(path.name, f"the other half of the header/image pair is missing ({Path(exc.filename or '').name}); "
                                          "send both files (.hdr and .img) together") from None
    except (ImageFileError, OSError, EOFError, ValueError, Exception) as exc:  # nibabel raises many kinds
        raise CorruptFileError(path.name, f"cannot read as NIfTI ({exc.__class__.__name__}); the file is damaged or not NIfTI") from None
    check_finite(path, data)
    if data.ndim == 2:
        data = data[:, :, None]
    affine = LPS_TO_RAS @ affine_ras  # RAS<->LPS is its own inverse
    return MedicalImage(
        array=np.ascontiguousarray(data),
        affine=affine,
        modality=modality,
        spacing_known=all(z > 0 for z in zooms),
        orientation_known=(sform_code > 0 or qform_code > 0),
        metadata={"format": kind, "dtype_on_disk": str(img.get_data_dtype())},
        source_files=(path,),
    )
