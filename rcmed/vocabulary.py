"""What a request names, and whether the model was ever taught it.

A medical assistant must not paint *something* for any word: asked for "the unicorn", it answers that
it was not trained to find it and lists what it can find on this modality, with no mask. This module
reads the target names out of a segmentation request ("Segment the X.", "Where is the X?", "Could you
outline the X and the Y for me?") and maps each to a name the model knows (`targets.json` beside its
weights), allowing case, plurals, British/American spelling and a few synonyms. A request that is not
a segmentation request (a description, a yes/no question) names nothing here and is answered as usual.

The mapping is lexical on purpose: it is exact and explainable. Paraphrases that do not match a
request pattern pass through to the model unchanged.
"""

from __future__ import annotations

import re

# spelling variants and synonyms -> the name used in training (lower case)
SYNONYMS: dict[str, str] = {
    "tumor": "tumour", "brain tumor": "brain tumour", "edema": "oedema", "optic disk": "optic disc",
    "disc": "optic disc", "cup": "optic cup", "kidney": "kidneys", "lung nodule": "nodule", "nucleus": "nuclei",
    "cell nuclei": "nuclei", "blood vessels": "vessels", "retinal vessels": "vessels", "vessel": "vessels",
    "gland": "glands", "lesion": "lesions", "colon polyp": "polyp", "polyps": "polyp", "mole": "skin lesion",
    "melanoma": "skin lesion", "breast mass": "breast lesion", "breast tumour": "breast lesion",
    "breast tumor": "breast lesion", "liver tumour": "liver lesion", "liver tumor": "liver lesion",
    "ventricle": "ventricles", "lungs": "lung", "clavicles": "clavicle", "infection": "lung infection",
    "ggo": "ground glass opacity", "ground-glass opacity": "ground glass opacity",
    "ground-glass opacities": "ground glass opacities",
}
_VERBS = r"(?:segment|outline|delineate|find|show(?: me)?|mark|highlight|locate|detect|draw|contour|mask)"
_REQUEST = [
    re.compile(rf"^(?:please\s+)?(?:can|could|would|will)\s+you\s+(?:please\s+)?{_VERBS}\s+(?P<names>.+?)(?:\s+for me)?\s*[.?!]*$", re.I),
    re.compile(rf"^(?:please\s+)?{_VERBS}\s+(?P<names>.+?)\s*[.?!]*$", re.I),
    re.compile(r"^where\s+(?:is|are)\s+(?P<names>.+?)\s*[.?!]*$", re.I),
]
_TAIL = re.compile(r"\s+(?:in|on|of)\s+(?:this|the|these|that)\s+[\w\s-]*?(?:image|scan|slice|picture|photo|photograph|"
                   r"x-ray|radiograph|volume)s?$", re.I)
_ARTICLE = re.compile(r"^(?:the|a|an|any|all|all the|every)\s+", re.I)


def target_key(name: str) -> str:
    """A target name as rules and answers compare it: lower case, single spaces."""
    return " ".join(name.lower().split())


def norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def requested_names(prompt: str) -> list[str]:
    """The target phrases of a segmentation request, in order; [] when the prompt is not one."""
    text = " ".join(prompt.strip().split())
    for pat in _REQUEST:
        m = pat.match(text)
        if m:
            names = _TAIL.sub("", m.group("names").strip())
            parts = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", names)
            out = [_ARTICLE.sub("", p).strip(" .?!") for p in parts]
            return [p for p in out if p]
    return []


def resolve(name: str, known: set[str]) -> str | None:
    """The known name `name` stands for, or None. `known` holds lower-case names."""
    n = _ARTICLE.sub("", norm(name))
    forms = [n, SYNONYMS.get(n, "")]
    for f in list(forms):
        if f:
            other = f[:-1] if f.endswith("s") else f + "s"  # plural <-> singular
            forms += [other, SYNONYMS.get(other, "")]
    forms = [f for f in dict.fromkeys(forms) if f]
    for f in forms:
        if f in known:
            return f
    for f in forms:  # a side-less name ("lung", "clavicle") is taught when a sided one is ("left lung")
        sided = sorted(k for k in known if k.endswith(" " + f))
        if sided:
            return sided[0]
    return None


def unknown_names(prompt: str, known: set[str]) -> list[str]:
    """The names a segmentation request asks for that the model was never taught (all of `known`)."""
    return [n for n in requested_names(prompt) if resolve(n, known) is None]
