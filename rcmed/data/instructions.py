"""Instruction builder: one described image -> several training examples (prompt, answer, which
mask each `<seg>` in the answer points to, and boxes).

Tasks: `describe_all`, `describe_colour` (alignment, stage 1), `segment_name`, `segment_multi`,
`segment_description`, `locate`, `count`, `presence` and `absent` (grounding, stage 2). An absent
target gets an explicit "not present" answer whose `<seg>` points to no mask (`ABSENT`, -1): the
model learns to answer it through its presence head. Each `<seg>` in an answer follows the name of
its target; `Example.seg_targets[i]` is the region index of the i-th `<seg>`, or -1.
Boxes in text are [x0, y0, x1, y1] on a 0-1000 scale of the image width/height (resolution-free);
`Example.boxes` keeps them in pixels. Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from rcmed.data.describe import Description, RegionFacts, hash_seed, region_text

SEG = "<seg>"
BOX = "<box>"
ABSENT = -1  # seg_targets entry of a target that is not in the image

_MODALITY_WORDS = {
    "ct": "CT", "mri": "MRI", "xray": "X-ray", "ultrasound": "ultrasound", "pet": "PET",
    "pathology": "pathology", "microscopy": "microscopy", "dermoscopy": "dermoscopy",
    "endoscopy": "endoscopy", "fundus": "fundus", "unknown": "medical",
}

_P_DESCRIBE_ALL = (
    "Describe the coloured regions in this {mod} image.",
    "What do the coloured overlays on this {mod} image show?",
    "Describe every highlighted region.",
    "Please give a report of each coloured region: what it is, where, how large and what shape.",
)
_P_DESCRIBE_COLOUR = (
    "What is the {colour} region?",
    "Describe the region shown in {colour}.",
    "{colour} region: what is it?",
)
_P_SEGMENT = (
    "Segment the {name}.",
    "Please delineate the {name} on this {mod} image.",
    "{name}",
    "Where is the {name}?",
    "Could you outline the {name} for me?",
    "Show me the {name} in this {mod} scan.",
    "Segment the {name} in this {mod} image.",
    "Find the {name}.",
    "Can you mark the {name}?",
)
_P_MULTI = ("Segment the {names}.", "Please delineate the {names}.", "Show the {names}.")
_P_DESCRIPTION = ("Segment the {desc}.", "Which structure is the {desc}? Outline it.", "Outline the {desc}.")
_P_LOCATE = (
    "Where is the {name}? Give its bounding box.",
    "Locate the {name} with a box.",
    "Bounding box of the {name}?",
)
_P_COUNT = ("How many {name} are there?", "Count the {name}.", "Number of {name} in this image?")
_P_PRESENCE = ("Is there a {name} in this image?", "Is the {name} visible?", "Any {name}?")


@dataclass
class Example:
    """One training example. `seg_targets[i]` is the region index of the i-th `<seg>` in `answer`."""

    task: str
    prompt: str
    answer: str
    seg_targets: list[int] = field(default_factory=list)
    boxes: list[list[int]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # every phrasing of the same request (training redraws one)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _ask(task: str, rng: random.Random, templates: tuple[str, ...], fields: dict[str, str], answer: str,
         seg_targets: list[int] | None = None, boxes: list[list[int]] | None = None) -> Example:
    """An example whose prompt is one phrasing drawn from `templates`, keeping all of them in `prompts` so
    that training can ask the same thing in every way (a model that met one phrasing per record learns
    the phrasing, not the request)."""
    prompts = [t.format(**fields) for t in templates]
    return Example(task, rng.choice(prompts), answer, list(seg_targets or []), list(boxes or []), prompts)


def _box1000(box: list[int], shape: tuple[int, int]) -> list[int]:
    h, w = shape
    x0, y0, x1, y1 = box
    return [round(1000 * x0 / w), round(1000 * y0 / h), round(1000 * (x1 + 1) / w), round(1000 * (y1 + 1) / h)]


def _descriptor(f: RegionFacts) -> str:
    return f"{f.shape} region in the {f.grid_position}" if f.grid_position != "centre" else f"{f.shape} region in the centre"


def build_examples(
    desc: Description,
    image_shape: tuple[int, int],
    *,
    modality: str = "unknown",
    absent: list[str] | None = None,
    seed: int = 0,
) -> list[Example]:
    """Expand one `Description` into examples of every task that applies to it.

    Args:
        desc: from `describe` or `describe_instances`; regions with `present=False` are negatives.
        image_shape: (H, W) of the image, for 0-1000 box coordinates.
        absent: further target names known not to be in the image.
    """
    rng = random.Random(hash_seed(seed, 104729))
    mod = _MODALITY_WORDS.get(modality, "medical")
    present = [(k, f) for k, f in enumerate(desc.regions) if f.present]
    negatives = [f.name for f in desc.regions if not f.present] + list(absent or [])
    ex: list[Example] = []
    if present:
        ex.append(_ask("describe_all", rng, _P_DESCRIBE_ALL, dict(mod=mod),
                       " ".join(f.text for _, f in present)))
    for k, f in present:
        ex.append(_ask("describe_colour", rng, _P_DESCRIBE_COLOUR, dict(colour=f.colour),
                       region_text(f, modality, random.Random(hash_seed(seed, k + 31)))))
        where = f"in the {f.grid_position} of the image" if f.grid_position != "centre" else "in the centre of the image"
        if f.count is not None:
            ex.append(_ask("count", rng, _P_COUNT, dict(name=f.name),
                           f"There are {f.count} {f.name} {SEG}.", [k]))
            ex.append(_ask("segment_name", rng, _P_SEGMENT, dict(name=f.name, mod=mod),
                           f"Here are the {f.count} {f.name} {SEG}, {f.distribution}.", [k]))
        else:
            ex.append(_ask("segment_name", rng, _P_SEGMENT, dict(name=f.name, mod=mod),
                           f"The {f.name} {SEG} is {where}.", [k]))
        box = f.box or [0, 0, 0, 0]
        ex.append(_ask("locate", rng, _P_LOCATE, dict(name=f.name),
                       f"The {f.name} {BOX} is at {_box1000(box, image_shape)}.", [], [list(box)]))
        ex.append(_ask("presence", rng, _P_PRESENCE, dict(name=f.name),
                       f"Yes, the {f.name} {SEG} is present, {where}.", [k]))
    # Segment by description only where the description picks out one region.
    keys = [(_descriptor(f)) for _, f in present if f.count is None]
    for k, f in present:
        if f.count is None and keys.count(_descriptor(f)) == 1:
            ex.append(_ask("segment_description", rng, _P_DESCRIPTION, dict(desc=_descriptor(f)),
                           f"That is the {f.name} {SEG}.", [k]))
    if len(present) >= 2:
        names = [f.name for _, f in present]
        joined = ", the ".join(names[:-1]) + f" and the {names[-1]}"
        parts = [f"the {f.name} {SEG}" for _, f in present]
        answer = ", ".join(parts[:-1]) + f" and {parts[-1]}"
        ex.append(_ask("segment_multi", rng, _P_MULTI, dict(names=joined),
                       f"Here are {answer}.", [k for k, _ in present]))
    for name in negatives:
        # The absent target still gets its <seg>: the model's presence head answers "absent" for
        # it (index -1: supervise presence = 0, no mask), so absence is learned, not implied.
        ex.append(_ask("absent", rng, _P_SEGMENT, dict(name=name, mod=mod),
                       f"The {name} {SEG} is not present in this image.", [ABSENT]))
        ex.append(_ask("presence", rng, _P_PRESENCE, dict(name=name),
                       f"No, the {name} {SEG} is not in this image.", [ABSENT]))
    return ex
