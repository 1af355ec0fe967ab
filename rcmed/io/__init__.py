"""Medical image input/output: readers, normalisation, slicing and writers."""

from rcmed.io.image import MedicalImage, Modality, parse_modality
from rcmed.io.limits import ReadLimits
from rcmed.io.readers import load

__all__ = ["MedicalImage", "Modality", "ReadLimits", "load", "parse_modality"]
