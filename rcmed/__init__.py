"""RCMed: a medical vision-language assistant that answers with text and pixel-accurate masks."""

from rcmed.errors import RCMedError, RCMedInputError
from rcmed.io import MedicalImage, Modality, load

__version__ = "0.1.0"
__all__ = ["MedicalImage", "Modality", "RCMedError", "RCMedInputError", "__version__", "load"]
