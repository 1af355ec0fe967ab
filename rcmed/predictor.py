"""The public Python API: load a model once, set an image once, ask many times.

    p = Predictor.from_pretrained("runs/x/model")
    p.set_image("scan.png")                      # reads, normalises and encodes once
    answer = p.predict("segment the liver and any lesion")
    answer.targets[0].mask                       # (H, W) bool in the source image's pixels

Volumes: `predict_volume(volume, prompt)` answers on the middle slice, then decodes that same
answer on every slice in batches (bounded memory) and assembles 3-D masks in the source voxel
order, with volumes in mL and 3-D connected components.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from rcmed.data.describe import grid_position
from rcmed.errors import RCMedError, RCMedInputError
from rcmed.io.image import MedicalImage, Modality, parse_modality
from rcmed.io.normalize import normalize
from rcmed.io.readers import load
from rcmed.io.slices import SliceStack, from_slices, to_slices
from rcmed.model.pretrained import sha256
from rcmed.model.processing import ImageGeometry, box_prompt_pixels, postprocess_mask, prepare_image, source_logits
from rcmed.model.rcmed import LOOP_VARIANTS, Generation, RCMedModel
from rcmed.model.vision import VisionFeatures
from rcmed.postprocess import MASK_PATHS, SPECK_FRACTION, PostprocessRules, target_key
from rcmed.tta import allowed, flip_image, unflip
from rcmed.vocabulary import Request, join_names, read_request, split_names, suggest

MAX_PROMPT_CHARS = 2000


class ModelNotAvailableError(RCMedError):
    """The requested model does not exist (yet) at the given name or path."""


@dataclass
class Target:
    """One target of an answer. `mask` is in the source image's geometry ((H, W) or (D, H, W)
    in the file's voxel order), None when the target is absent. `box` is [x0, y0, x1, y1]
    inclusive source pixels (2-D only). `components`: connected components of the mask."""

    name: str
    present: bool
    score: float
    presence: float
    mask: np.ndarray | None = None
    box: list[int] | None = None
    components: int | None = None
    instances: np.ndarray | None = None  # int32 label map of the mask's connected components
    area_px: int | None = None
    area_mm2: float | None = None
    volume_ml: float | None = None
    logits: np.ndarray | None = None  # (H, W) float32 mask logits behind `mask` (mean over the averaged views), 2-D only
    # is the image like the images the model learnt this target from (`rcmed.model.familiarity`)? None: not measured
    familiar: bool | None = None
    familiarity: float | None = None  # the image's distance to them, in units of their own median distance

    def to_json(self, mask_file: str | None = None) -> dict[str, object]:
        d: dict[str, object] = {"name": self.name, "present": self.present, "score": round(self.score, 4),
                                "presence": round(self.presence, 4), "box": self.box, "mask": mask_file,
                                "instances": self.components}
        if self.familiar is not None:
            d["familiar"] = self.familiar
            d["familiarity"] = None if self.familiarity is None else round(self.familiarity, 3)
        if self.volume_ml is not None:
            d["volume_ml"] = round(self.volume_ml, 3)
        else:
            d["area_mm2"] = None if self.area_mm2 is None else round(self.area_mm2, 2)
        return d


@dataclass
class Answer:
    """`text` for people; `amended`: targets whose sentence in the language model's text was changed
    to say what the target's decision says (see `agree_text`)."""

    text: str
    targets: list[Target] = field(default_factory=list)
    amended: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # names asked for that the model was never taught
    off_modality: dict[str, list[str]] = field(default_factory=dict)  # name -> the only modalities it was taught on
    modality: dict[str, object] | None = None  # {"name", "source": given | recognised | intensity, "confidence"}
    suggestions: dict[str, list[str]] = field(default_factory=dict)  # unknown name -> taught names close in meaning
    downsampled_from: list[int] | None = None  # the 2-D image's size on disk when it was reduced on read
    mask_shape: list[int] | None = None  # then the size the masks have


def _rules(folder: Path) -> PostprocessRules:
    try:
        return PostprocessRules.load(folder)
    except ValueError as err:
        raise ModelNotAvailableError(str(err)) from None


def _model_sha(folder: Path) -> str:
    """A model folder's identity: the sha256 of its trained parts (model.safetensors)."""
    return sha256(folder / "model.safetensors")


class Predictor:
    """Encode an image once, answer many prompts about it."""

    def __init__(self, model: RCMedModel, name: str = "custom", sha256: str = "", presence_threshold: float = 0.5,
                 rules: PostprocessRules | None = None) -> None:
        self.model = model.eval()
        self.rules = rules or PostprocessRules()  # mask post-processing chosen on validation (postprocess.json)
        self.name, self.sha256 = name, sha256
        self.presence_threshold = presence_threshold
        self.size = model.config.vision.img_size
        self._image: MedicalImage | None = None
        self._geom: ImageGeometry | None = None
        self._pixels: torch.Tensor | None = None
        self._feats = None
        self._normalised: np.ndarray | None = None  # the image as encoded, before resizing: (H, W) or (H, W, 3)
        self._mirrors: dict[str, tuple[torch.Tensor, VisionFeatures]] = {}  # flip -> (pixels, features), made on demand
        self._decoded: dict[tuple, torch.Tensor] = {}  # (ids, rounds, loop, flip) -> mirror logits of the last answer
        self._last: tuple[tuple, Generation] | None = None  # (request, generation): greedy decoding repeats itself
        self.folder: Path | None = None  # the model folder, when loaded from one
        self._sam = None  # LiteMedSAM's own decoder, loaded on the first "box" mask path
        self.vocabulary: dict[str, list[str]] | None = None  # modality -> target names taught (targets.json)
        self.modality_head = None  # `rcmed.model.modality.ModalityHead` of the folder, when it has one
        self.familiarity = None  # `rcmed.model.familiarity.Familiarity` of the folder, when it has one
        self.modality_info: dict[str, object] | None = None  # the image's modality and where it came from
        # encoded images kept between requests (the web page sends the same image again with each click):
        # at most `cache_size`, each for `cache_ttl_s` seconds after its last use
        self.cache_size, self.cache_ttl_s = 4, 600.0
        self._encoded: dict[str, tuple[float, tuple[torch.Tensor, ImageGeometry, VisionFeatures]]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default") -> "Predictor":
        """A model folder written by `save_pretrained` / `rcmed train`, or "default" (the bundled model)."""
        if str(name_or_path) == "default":
            folder = Path(__file__).resolve().parent / "weights" / "default"
            if not (folder / "model.safetensors").is_file():
                raise ModelNotAvailableError("the bundled default model is not trained yet; pass --model RUN/model "
                                             "(a folder written by `rcmed train`)")
        else:
            folder = Path(name_or_path)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ModelNotAvailableError(f"{folder}: no config.json + model.safetensors; not an RCMed model folder")
        predictor = cls(RCMedModel.from_pretrained(folder), name=folder.name if folder.name != "model" else folder.parent.name,
                        sha256=_model_sha(folder), rules=_rules(folder))
        predictor.folder = folder
        from rcmed.model.familiarity import Familiarity
        from rcmed.model.modality import ModalityHead

        try:
            predictor.modality_head = ModalityHead.load(folder)
            predictor.familiarity = Familiarity.load(folder)
        except ValueError as err:
            raise ModelNotAvailableError(str(err)) from None
        if (folder / "targets.json").is_file():
            try:
                vocab = json.loads((folder / "targets.json").read_text())
                predictor.vocabulary = {str(m): [str(n) for n in v] for m, v in dict(vocab).items()}
            except (ValueError, TypeError, AttributeError):
                raise ModelNotAvailableError(f"{folder / 'targets.json'}: not a JSON object of modality -> names") from None
        return predictor

    def read(self, prompt: str, modality: str) -> Request:
        """What `prompt` asks of this model on `modality` (`rcmed.vocabulary.read_request`): the names it can
        answer, asked by their trained names in the training template, and those it cannot. Without a
        `targets.json` the prompt goes to the model as given."""
        return Request(prompt=prompt) if self.vocabulary is None else read_request(prompt, self.vocabulary, modality)

    def refusal(self, prompt: str, modality: str) -> Answer | None:
        """The answer to a segmentation request that names no target this model was taught on `modality`
        (`targets.json`): a plain "not trained" with what it can find on `modality`, no mask. A name
        never taught at all is listed in `unknown`; a name taught only on other modalities (a polyp asked
        on a CT) in `off_modality`, with where it was taught: a mask drawn there would be a guess.
        None when the request names a target taught on `modality`, or is not a segmentation request, or
        the model folder lists no targets."""
        return self._refuse(self.read(prompt, modality), modality)

    def _refuse(self, req: Request, modality: str) -> Answer | None:
        if not req.refused:
            return None
        can = f"On {modality} images I can find: {', '.join(req.here)}." if req.here else \
            f"I was not trained on {modality} images; I know: {', '.join(sorted(self.vocabulary or {}))}."
        return _not_answered(Answer(text="", targets=[]), req, modality, can)

    def answer(self, image: MedicalImage | str | Path, prompt: str, *, boxes: list[list[float]] | None = None,
               points: list[list[float]] | None = None, point_labels: list[int] | None = None,
               modality: str | None = None) -> Answer:
        """The one road from an image to an answer, 2-D or 3-D: reads `image` if it is a path (with
        `modality`, else the file's own or the recognised one); a 2-D image is encoded (`set_image`) and
        asked (`predict`), a volume is answered on its middle slice and decoded on every slice
        (`predict_volume`). `boxes` ([x0, y0, x1, y1]) and `points` ([x, y], `point_labels` 1 inside /
        0 outside) are in source pixels and apply to 2-D images only."""
        img = image if isinstance(image, MedicalImage) else load(image, modality=modality)
        if img.is_volume:
            if boxes or points:
                raise RCMedInputError("box", "box and point prompts apply to 2-D images; crop the volume or omit them")
            return self.predict_volume(img, prompt)
        self.set_image(img)
        return self.predict(prompt, boxes=boxes, points=points, point_labels=point_labels)

    # ------------------------------------------------------------------ 2-D
    def set_image(self, image: MedicalImage | str | Path, modality: str | None = None, window="auto") -> None:
        """Read (if a path), normalise by modality and encode a 2-D image once."""
        img = image if isinstance(image, MedicalImage) else load(image, modality=modality)
        if img.is_volume:
            raise RCMedInputError("image", f"is a volume with {img.n_slices} slices; use predict_volume()")
        x = normalize(img, window=window)
        self._pixels, self._geom, self._feats = self._encode(x)
        self._mirrors, self._decoded, self._last = {}, {}, None
        self.modality_info = {"name": img.modality.value, "source": "given", "confidence": None}
        if img.modality is Modality.UNKNOWN and self.modality_head is not None:
            name, conf = self.modality_head.recognise(self._feats.embedding)  # the features of the generic rule
            img = replace(img, modality=parse_modality(name))
            self.modality_info = {"name": name, "source": "recognised", "confidence": round(conf, 4)}
            again = normalize(img, window=window)  # the modality's own rule (a CT window, percentiles)
            if not np.array_equal(again, x):
                x = again
                self._pixels, self._geom, self._feats = self._encode(x)
        self._image, self._normalised = img, x

    def _encode(self, x: np.ndarray) -> tuple[torch.Tensor, ImageGeometry, VisionFeatures]:
        """Model-input pixels, geometry and encoder features of a normalised image, from the cache of recently
        encoded images when the same pixels were encoded before (keyed by their sha256)."""
        now = time.monotonic()
        self._encoded = {k: v for k, v in self._encoded.items() if now - v[0] < self.cache_ttl_s}
        key = f"{hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()}{x.shape}{x.dtype}"
        if key in self._encoded:
            value = self._encoded.pop(key)[1]
        else:
            pixels, geom = prepare_image(x, self.size)
            with torch.inference_mode():
                value = (pixels, geom, self.model.encode(pixels[None]))
        if self.cache_size > 0:
            self._encoded[key] = (now, value)  # the most recently used last
            while len(self._encoded) > self.cache_size:
                self._encoded.pop(next(iter(self._encoded)))
        return value

    def predict(self, prompt: str, points: list[list[float]] | None = None, boxes: list[list[float]] | None = None,
                point_labels: list[int] | None = None, max_new_tokens: int | None = None,
                rounds: int | None = None, flips: tuple[str, ...] | list[str] | None = None, loop: str = "full",
                mask_path: str | None = None) -> Answer:
        """Answer `prompt` about the image of `set_image`. `boxes`: source-pixel [x0, y0, x1, y1],
        one for all targets or one per target; `points`: source-pixel [x, y] shared by all targets,
        with `point_labels` 1 (inside, the default) or 0 (outside). `rounds` overrides the number
        of closed-loop rounds (1 = no loop; used for ablations), `loop` its variant ("full", "no-region",
        "no-mask-prompt": `RCMedModel._rounds`). `flips`: the mirrors ("h", "v")
        whose mask logits are averaged with the image's for every target (`rcmed.tta`); None: each
        target's mirrors from the model folder's rules; () none. Mirrors apply to prompts by words
        alone: with boxes or points the mask is the image's own. Presence is always the image's own.
        A mask is the pixels whose mean logit is above the target's cut in the folder's rules
        (`PostprocessRules.thresholds`, prompts by words alone; 0 otherwise), then the component rules.
        `mask_path` ("query", "box", "both", "refine"; `rcmed.postprocess.MASK_PATHS`): how a mask is drawn for a
        prompt by words alone; None: each target's path from the folder's rules ("query" by default).
        Off the query path no mirrors are averaged. The target's cut applies on the path it was chosen on (the
        rules' path); on another path the caller asks for, the cut is 0."""
        if self._feats is None or self._geom is None or self._image is None:
            raise RCMedInputError("predict", "no image set; call set_image() first")
        prompt = _check_prompt(prompt)
        if mask_path is not None and mask_path not in MASK_PATHS:
            raise RCMedInputError("mask_path", f"unknown mask path {mask_path!r}; use one of {MASK_PATHS}")
        if mask_path in ("box", "refine") and not self.model.config.pretrained_vision:
            raise RCMedInputError("mask_path", f"{mask_path!r} gives boxes to LiteMedSAM's own decoder, which needs the "
                                               "model's encoder to be LiteMedSAM's (pretrained_vision); this model's is not")
        modality = self._image.modality.value
        req = self.read(prompt, modality)
        refused = self._refuse(req, modality)
        if refused is not None:
            return _with_modality(refused, self.modality_info)
        prompt = req.prompt  # the answerable names in the training template ("tumor" -> "brain tumour")
        try:
            allowed("", flips or ())
        except ValueError as err:
            raise RCMedInputError("flips", str(err)) from None
        model_boxes = None if boxes is None else self._boxes_to_model(boxes)
        model_points = None if points is None else self._points_to_model(points, point_labels)
        if loop not in LOOP_VARIANTS:
            raise RCMedInputError("loop", f"unknown loop variant {loop!r}; use one of {LOOP_VARIANTS}")
        per_target_boxes = boxes is not None and len(boxes) > 1  # one box per name, in the order of one question
        texts, targets, amended = [], [], []
        questions = req.questions() if not per_target_boxes else [prompt]
        split = len(questions) > 1  # a request for several names, asked one name a question
        for question in questions:
            text, found, changed = self._ask(question, model_boxes, model_points, (boxes, points, point_labels),
                                             max_new_tokens, rounds, loop, flips, mask_path)
            if split and len(found) > 1:  # a question naming one target answers for that one: a second <seg> of the
                found = found[:1]         # model's is not what was asked, and its mask is not given as if it were
                text = _first_sentence_of(text, found[0].name)
            texts.append(text)
            targets += found
            amended += changed
        # the same name twice is one structure, unless the caller gave one box per target
        targets = targets if per_target_boxes else first_of_each(targets)
        text = grammar(" ".join(texts), [t.name for t in targets])
        answer = _not_answered(Answer(text=text, targets=targets, amended=amended), req, modality)
        if self._image.metadata.get("downsampled_from"):
            answer.downsampled_from = list(self._image.metadata["downsampled_from"])
            answer.mask_shape = list(self._image.spatial_shape)
        return _with_modality(answer, self.modality_info)

    def _ask(self, prompt: str, model_boxes, model_points, given: tuple, max_new_tokens: int | None,
             rounds: int | None, loop: str, flips, mask_path: str | None) -> tuple[str, list[Target], list[str]]:
        """One question to the model about the image of `set_image`, decided: (its answer text made to agree with
        the decisions, the targets it names, the names whose sentence was changed). `given`: the caller's
        (boxes, points, point_labels) in source pixels; the rest as in `predict`."""
        boxes, points, point_labels = given
        request = (prompt, str(boxes), str(points), str(point_labels), max_new_tokens, rounds, loop)
        if self._last is not None and self._last[0] == request:
            gen = self._last[1]  # the same question about the same image (e.g. again with other mirrors)
        else:
            gen = self.model.generate(self._pixels[None], prompt, feats=self._feats, max_new_tokens=max_new_tokens,
                                      boxes=model_boxes, points=model_points, rounds=rounds, loop=loop)
            self._last = (request, gen)
        spacing = self._image.spacing
        by_words = boxes is None and points is None
        rules = self.rules.for_modality(self._image.modality.value)  # a target's rules for this modality, where chosen apart
        paths = [(mask_path or rules.mask_path_for(t.name)) if by_words else "query" for t in gen.targets]
        boxed = self._box_prompted(prompt, gen, paths, rounds, loop)
        targets = []
        for k, t in enumerate(gen.targets):
            present = t.presence >= rules.presence_for(t.name, self.presence_threshold)
            mask = None
            # the target's cut was chosen on the logits of its own path (the rules'), not on another one's
            cut = rules.threshold_for(t.name) if by_words and paths[k] == rules.mask_path_for(t.name) else 0.0
            if present and paths[k] != "query":
                logits = source_logits(boxed[k], self._geom)
                mask = rules.apply(t.name, (logits > cut).numpy())
            elif present:
                mirrors = (rules.flips_for(t.name) if flips is None else allowed(t.name, flips)) if by_words else ()
                logits, views = source_logits(t.mask_logits, self._geom), 1  # (H, W)
                for f in mirrors:
                    mirrored = self._mirror_logits(prompt, gen.answer, f, rounds, loop)
                    if k < len(mirrored):  # (an answer cut at max_new_tokens right after a <seg> has one slot less)
                        logits, views = logits + mirrored[k], views + 1
                logits = logits / views  # the mean over the image and the mirrors that answered
                mask = rules.apply(t.name, (logits > cut).numpy())
            if mask is not None and not mask.any():
                mask, present = None, False  # "present" with an empty mask is reported as not found
            area = int(mask.sum()) if mask is not None else None
            labels, n_comp = ndi.label(mask) if mask is not None else (None, None)
            targets.append(Target(
                name=t.name, present=present, score=t.score, presence=t.presence, mask=mask,
                box=mask_box(mask) if mask is not None else None,
                components=None if n_comp is None else int(n_comp),
                instances=None if labels is None else labels.astype(np.int32), area_px=area,
                area_mm2=area * spacing[0] * spacing[1] if (area is not None and spacing) else None,
                logits=None if mask is None else logits.float().numpy()))
        text, amended = agree_text(gen.text, targets)
        return self._familiar(text, targets, self._feats), targets, amended

    def _familiar(self, text: str, targets: list[Target], vision: VisionFeatures | None, what: str = "image") -> str:
        """`text` with a warning for each target asked of an image unlike the images the model learnt it from
        (`rcmed.model.familiarity`, on the encoder features `vision` of the image, or of a volume's middle slice, the
        one its text is answered on; the targets get `familiar` and `familiarity`): its mask, or its "not found", is
        then a guess. Unchanged when the model folder has no familiarity statistics."""
        if self.familiarity is None or vision is None:
            return text
        from rcmed.model.familiarity import features

        feats = features(vision.embedding)  # once for every target of the answer
        for t in targets:
            checked = self.familiarity.check(feats, t.name)
            if checked is None:
                continue
            t.familiarity, t.familiar = checked
            if not t.familiar:
                so = "this mask may be wrong" if t.present else "do not take \"not found\" as absence"
                text += (f" This {what} is unlike the images I learnt the {t.name} from "
                         f"({t.familiarity:.1f} times their usual distance), so {so}.")
        return text.strip()

    def _box_prompted(self, prompt: str, gen: Generation, paths: list[str], rounds: int | None,
                      loop: str = "full") -> dict[int, torch.Tensor]:
        """(S, S) model-input mask logits of the targets whose path is not "query", keyed by index: the box
        our decoder predicted for each, as a box prompt into LiteMedSAM's own decoder ("box"), or together with
        the text query into ours ("both": the same answer decoded again with one box per target); or one box per
        part of the query's own mask into LiteMedSAM's decoder, joined ("refine"; an empty mask stays the query's).
        As the decoder stage draws them for validation (`rcmed.train.decoder_stage.path_logits`)."""
        need = [k for k, p in enumerate(paths) if p != "query"]
        if not need:
            return {}
        boxes = box_prompt_pixels(torch.stack([t.box for t in gen.targets]), self.size)
        out: dict[int, torch.Tensor] = {}
        to_sam = [k for k in need if paths[k] == "box"]
        with torch.inference_mode():
            if to_sam:
                dec = self._litemedsam().segment_boxes(self._feats, boxes[to_sam])
                out.update({k: dec.masks[j, 0] for j, k in enumerate(to_sam)})
            for k in (k for k in need if paths[k] == "refine"):
                query = gen.targets[k].mask_logits
                refined = self._litemedsam().segment_components(self._feats, query > 0, min_fraction=SPECK_FRACTION)
                out[k] = query if refined is None else refined
            if any(paths[k] == "both" for k in need):
                again = self.model.generate(self._pixels[None], prompt, feats=self._feats, boxes=boxes, rounds=rounds,
                                            loop=loop)
                for k in need:
                    if paths[k] == "both" and k < len(again.targets):
                        out[k] = again.targets[k].mask_logits
        return out

    def _litemedsam(self):
        """LiteMedSAM's prompt encoder and mask decoder as pretrained (the image features are shared: our
        encoder is its frozen encoder)."""
        if self._sam is None:
            from rcmed.model.medsam import LiteMedSAM

            self._sam = LiteMedSAM.from_pretrained().eval()
        return self._sam

    def _mirror_logits(self, prompt: str, answer: str, flip: str, rounds: int | None, loop: str = "full") -> torch.Tensor:
        """(K, H, W) source-pixel mask logits of the K targets of `answer`, decoded (the same tokens,
        teacher-forced) on the image mirrored by `flip` and mirrored back. Kept for the last answer
        (asking again with other mirrors decodes only the new ones); mirrored features for the image."""
        ids = self.model.processor.encode(prompt, answer)[0]
        key = (tuple(ids), rounds, loop, flip)
        if key not in self._decoded:
            if any(k[:3] != key[:3] for k in self._decoded):
                self._decoded = {}  # another answer: memory stays bounded by one answer's mirrors
            assert self._normalised is not None and self._geom is not None
            with torch.inference_mode():
                if flip not in self._mirrors:
                    pix, geom = prepare_image(flip_image(self._normalised, flip), self.size)
                    assert geom == self._geom  # a mirror keeps the size, so the geometry is the same
                    self._mirrors[flip] = (pix, self.model.encode(pix[None]))
                pix, feats = self._mirrors[flip]
                out = self.model.decode_answer(pix[None], ids, feats=feats, rounds=rounds, loop=loop)
            self._decoded[key] = unflip(source_logits(out.masks[:, 0], self._geom), flip)
        return self._decoded[key]

    def _points_to_model(self, points: list[list[float]], labels: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        geom = self._geom
        assert geom is not None
        p = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(1, -1, 2)
        h, w = geom.source_hw
        if not torch.isfinite(p).all():
            raise RCMedInputError("points", f"points {p[0].tolist()} have a value that is not a finite number")
        if (p < 0).any() or (p[..., 0] >= w).any() or (p[..., 1] >= h).any():
            raise RCMedInputError("points", f"points {p[0].tolist()} fall outside the {w}x{h} image; use x y pixels")
        lab = torch.ones(p.shape[:2]) if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(1, -1)
        if lab.shape[1] != p.shape[1] or not torch.isin(lab, torch.tensor([0.0, 1.0])).all():
            raise RCMedInputError("point_labels", "give one label (1 inside, 0 outside) per point")
        return p * (geom.resized_hw[0] / h), lab

    def _boxes_to_model(self, boxes: list[list[float]]) -> torch.Tensor:
        geom = self._geom
        assert geom is not None
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        h, w = geom.source_hw
        if not torch.isfinite(b).all():
            raise RCMedInputError("--box", f"box {b.tolist()} has a value that is not a finite number")
        if (b < 0).any() or (b[:, 2] >= w).any() or (b[:, 3] >= h).any() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise RCMedInputError("--box", f"box {b.tolist()} is outside the {w}x{h} image or inverted; use x0 y0 x1 y1 pixels")
        scale = geom.resized_hw[0] / h
        return b * scale

    # ------------------------------------------------------------------ 3-D
    def predict_volume(self, volume: MedicalImage | str | Path, prompt: str, modality: str | None = None,
                       window="auto", batch_slices: int = 8, progress: bool = False) -> Answer:
        """Answer on the middle axial slice, then decode the same answer on every slice in batches
        of `batch_slices` (memory bounded by one batch) and stack masks in source voxel order. A volume
        of unknown modality is taken as CT when its intensities are HU-like, else the modality head names it."""
        vol = volume if isinstance(volume, MedicalImage) else load(volume, modality=modality)
        if not vol.is_volume:
            raise RCMedInputError("volume", "is a 2-D image; use set_image() and predict()")
        prompt = _check_prompt(prompt)
        vol, info = self._volume_modality(vol, window)
        req = self.read(prompt, vol.modality.value)
        refused = self._refuse(req, vol.modality.value)
        if refused is not None:
            return _with_modality(refused, info)
        stack = to_slices(vol)
        norm = normalize(vol.with_array(stack.slices), window=window)  # window from the whole volume, once
        parts = [self._predict_volume(vol, stack, norm, q, batch_slices, progress) for q in req.questions()]
        answer = Answer(text=" ".join(a.text for a in parts), targets=first_of_each([t for a in parts for t in a.targets]),
                        amended=[n for a in parts for n in a.amended])
        return _with_modality(_not_answered(answer, req, vol.modality.value), info)

    def recognise(self, image: MedicalImage) -> tuple[str, float] | None:
        """What the modality head makes of a 2-D image as if no modality were given: (name, probability);
        None without a head. (Used to measure recognition; `set_image` does the same when it is needed.)"""
        if self.modality_head is None:
            return None
        return self._recognise_normalised(normalize(replace(image, modality=Modality.UNKNOWN)))

    def _recognise_normalised(self, x: np.ndarray) -> tuple[str, float]:
        """The modality head on one normalised 2-D image (H, W) or (H, W, 3) in [0, 1] (encoded through `_encode`)."""
        return self.modality_head.recognise(self._encode(x)[2].embedding)

    # Below this HU-like minimum a volume of unknown modality is taken as CT: air is about -1000 HU, and
    # MRI, PET and the other modalities have no negative values of that size.
    CT_MIN_VALUE = -500.0

    def _volume_modality(self, vol: MedicalImage, window) -> tuple[MedicalImage, dict[str, object]]:
        """The volume with its modality (given; else CT by its intensities; else recognised on the middle
        slice by the folder's modality head) and where the modality came from."""
        if vol.modality is not Modality.UNKNOWN:
            return vol, {"name": vol.modality.value, "source": "given", "confidence": None}
        if float(vol.array.min()) < self.CT_MIN_VALUE:
            return replace(vol, modality=Modality.CT), {"name": "ct", "source": "intensity", "confidence": None}
        if self.modality_head is None:
            return vol, {"name": "unknown", "source": "given", "confidence": None}
        stack = to_slices(vol)
        name, conf = self._recognise_normalised(normalize(vol.with_array(stack.slices), window=window)[len(stack) // 2])
        return replace(vol, modality=parse_modality(name)), {"name": name, "source": "recognised",
                                                             "confidence": round(conf, 4)}

    def _predict_volume(self, vol: MedicalImage, stack: SliceStack, norm: np.ndarray, prompt: str, batch_slices: int,
                        progress: bool) -> Answer:
        """One question about a volume: answered on the middle of its normalised axial slices `norm` (`stack`:
        `to_slices(vol)`), the same answer decoded on every slice."""
        from tqdm import tqdm

        n = len(stack)
        mid = n // 2
        pix, geom, middle = self._encode(norm[mid])  # (cached: every question of a volume asks the same slice)
        with torch.inference_mode():
            first = self.model.generate(pix[None], prompt, feats=middle)
        names = [t.name for t in first.targets]
        if not names:
            return Answer(text=first.text, targets=[])
        ids = self.model.processor.encode(prompt, first.answer)[0]
        masks = np.zeros((len(names), *stack.slices.shape[:3]), bool)
        presence = np.zeros((len(names), n))
        scores = np.zeros((len(names), n))
        rules = self.rules.for_modality(vol.modality.value)  # a target's rules for this modality, where chosen apart
        # the folder's mask-logit cut per target, where it was chosen on the query's logits (the path decoded here)
        cuts = [rules.threshold_for(name) if rules.mask_path_for(name) == "query" else 0.0 for name in names]
        pcuts = [rules.presence_for(name, self.presence_threshold) for name in names]
        for start in tqdm(range(0, n, batch_slices), desc="slices", disable=not progress, leave=False):
            idx = list(range(start, min(start + batch_slices, n)))
            batch = torch.stack([prepare_image(norm[i], self.size)[0] for i in idx])
            outs = self.model.decode_answer(batch, ids)
            k = len(names)
            for j, i in enumerate(idx):
                for t in range(k):
                    p = float(torch.sigmoid(outs.presence[j * k + t]))
                    presence[t, i] = p
                    scores[t, i] = float(outs.iou[j * k + t, 0])
                    if p >= pcuts[t]:
                        masks[t, i] = postprocess_mask(outs.masks[j * k + t, 0], geom, cuts[t])
        voxel_ml = float(np.prod(vol.spacing)) / 1000.0 if vol.spacing else None
        targets = []
        for t, name in enumerate(names):
            m3 = rules.apply(name, from_slices(masks[t], stack))
            present = bool(m3.any())
            targets.append(Target(
                name=name, present=present, score=float(scores[t][presence[t] >= pcuts[t]].mean()) if present else 0.0,
                presence=float(presence[t].max()), mask=m3 if present else None,
                components=int(ndi.label(m3)[1]) if present else None, area_px=int(m3.sum()) if present else None,
                volume_ml=float(m3.sum()) * voxel_ml if (present and voxel_ml is not None) else None))
        text, amended = agree_text(first.text, targets)  # the middle slice's words, the whole volume's decisions
        text = self._familiar(grammar(text, names), targets, middle, what="volume")
        return Answer(text=text, targets=first_of_each(targets), amended=amended)

    def answer_json(self, answer: Answer, mask_files: list[str | None] | None = None) -> dict[str, object]:
        """The public `answer.json` layout (see README)."""
        files = mask_files or [None] * len(answer.targets)
        doc = {"text": answer.text, "model": {"name": self.name, "sha256": self.sha256},
               "targets": [t.to_json(f) for t, f in zip(answer.targets, files, strict=True)]}
        if answer.amended:
            doc["text_amended_for"] = list(answer.amended)
        if answer.modality is not None:
            doc["modality"] = dict(answer.modality)
        if answer.downsampled_from:  # a huge 2-D image was reduced on read (`ReadLimits.max_2d_side`)
            doc["downsampled_from"] = list(answer.downsampled_from)
            doc["mask_shape"] = list(answer.mask_shape or [])
        doc["known"] = not answer.unknown
        if answer.unknown or answer.off_modality:
            doc["not_trained_for"] = [*answer.unknown, *answer.off_modality]
        if answer.suggestions:
            doc["did_you_mean"] = {n: list(v) for n, v in answer.suggestions.items()}
        if answer.off_modality:
            doc["trained_only_on"] = {n: list(ms) for n, ms in answer.off_modality.items()}
        return doc


MODALITY_WORDS = {"ct": "a CT", "mri": "an MRI", "xray": "an X-ray", "ultrasound": "an ultrasound", "pet": "a PET",
                  "pathology": "a pathology", "microscopy": "a microscopy", "dermoscopy": "a dermoscopy",
                  "endoscopy": "an endoscopy", "fundus": "a fundus"}


def _with_modality(answer: Answer, info: dict[str, object] | None) -> Answer:
    """The answer carrying the image's modality; when the model recognised it (none was given), the text
    starts by saying what the image looks like, so a wrong guess is visible and can be overridden."""
    if info is None:
        return answer
    answer.modality = dict(info)
    if info["source"] != "given":
        how = f"{float(info['confidence']):.0%} sure" if info.get("confidence") is not None else "from its intensities"
        words = MODALITY_WORDS.get(str(info["name"]), f"a {info['name']}")
        answer.text = f"This looks like {words} image ({how}; give the modality if it is not). {answer.text}"
    return answer


def _not_answered(answer: Answer, req: Request, modality: str, tail: str = "") -> Answer:
    """`answer` with the names of `req` it could not answer said in words and in its fields: never taught
    (`unknown`, with "did you mean" suggestions by meaning) or taught only on other modalities (`off_modality`)."""
    if not (req.unknown or req.elsewhere):
        return answer
    said = []
    if req.unknown:
        said.append(f"I was not trained to find {', '.join(repr(n) for n in req.unknown)}")
    if req.elsewhere:
        said.append("; ".join(f"I was trained to find '{n}' only on {' and '.join(ms)} images, not on {modality} images"
                              for n, ms in req.elsewhere.items()))
    maybe = {n: s for n in req.unknown if (s := suggest(n, req.here))}
    one = len(req.unknown) + len(req.elsewhere) == 1
    text = f"{'; '.join(said)}, so I drew no mask{'' if answer.targets == [] else (' for it' if one else ' for those')}."
    if tail:
        text += f" {tail}"
    if maybe:
        text += " Did you mean " + "; ".join(f"{' or '.join(repr(c) for c, _ in s)} for '{n}'" for n, s in maybe.items()) \
            + "? Ask with that name."
    answer.text = f"{answer.text} {text}".strip()
    answer.unknown = [*answer.unknown, *req.unknown]
    answer.off_modality = {**answer.off_modality, **req.elsewhere}
    answer.suggestions = {**answer.suggestions, **{n: [c for c, _ in s] for n, s in maybe.items()}}
    return answer


def first_of_each(targets: list[Target]) -> list[Target]:
    """The first target of each name. The language model sometimes names a target twice ("the right
    lung, the left lung and the left lung"); a second mask of the same structure would only compete
    with the first (two mask files, two areas), so the later mentions are dropped."""
    seen: set[str] = set()
    out = []
    for t in targets:
        key = target_key(t.name)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _first_sentence_of(text: str, name: str) -> str:
    """The sentence of `text` that names `name` (the first), else its first sentence: what a one-name question's
    answer says of the one target kept."""
    sentences = re.findall(r"[^.!?]+[.!?]", text) or [text]
    named = [s for s in sentences if re.search(rf"\b{re.escape(name)}\b", s, flags=re.IGNORECASE)]
    return (named or sentences)[0].strip()


def agree_text(text: str, targets: list[Target]) -> tuple[str, list[str]]:
    """Make the answer's sentence about each target say what its decision says.

    The language model writes "is not present" or "is in the ... of the image" before the mask
    decoder has looked (the `<region>` slot is filled afterwards), and on held-out phantoms its
    yes/no is right less often than the presence head's (0.81 vs 0.965; see the model card), so
    the decision wins. Only the sentences of the trained answer forms are rewritten, with the
    position measured on a 2-D mask; a volume's answer is written on its middle slice, so a target found on
    other slices is said to be "present in this volume". Returns (text, names of the targets whose sentence
    changed).
    """
    amended = []
    for t in targets:
        n, before = re.escape(t.name), text
        if t.present and t.mask is not None and t.mask.ndim in (2, 3):
            if t.mask.ndim == 2:
                grid = grid_position(t.mask)
                where = "in the centre of the image" if grid == "centre" else f"in the {grid} of the image"
                said, yes = f"The {t.name} is {where}.", f"Yes, the {t.name} is present, {where}."
            else:  # a volume's words come from its middle slice, its decision from every slice
                said, yes = f"The {t.name} is present in this volume.", f"Yes, the {t.name} is present in this volume."
            rules = [(rf"\bThe {n} is not present in this image\.", said),
                     (rf"\bNo, the {n} is not in this image\.", yes)]
            if t.components is not None:  # a count is the mask's, not the words' ("Here are the 10 nuclei" over 59)
                rules.append((rf"\bHere (?:is|are) the \d+ {n}\b",
                              f"Here {'is' if t.components == 1 else 'are'} the {t.components} {t.name}"))
        elif not t.present:
            rules = [(rf"\bThe {n} is in the [a-z ]+? of the image\.", f"The {t.name} is not present in this image."),
                     (rf"\bYes, the {n} is present, in the [a-z ]+? of the image\.", f"No, the {t.name} is not in this image."),
                     (rf"\bHere are the \d+ {n}(?:, [a-z ]+)?\.", f"The {t.name} is not present in this image.")]
        else:
            rules = []
        for pattern, sentence in rules:
            text = re.sub(pattern, lambda _m, s=sentence: s, text, flags=re.IGNORECASE)
        if not t.present:
            text = _unsay(text, t.name)
        if text != before:
            amended.append(t.name)
    return text, amended


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NEGATION = re.compile(r"\b(?:not|no|none|absent)\b", re.IGNORECASE)
_LIST = re.compile(r"^Here (?:is|are) (?P<list>.+)\.$", re.IGNORECASE)


def _unsay(text: str, name: str) -> str:
    """`text` with no sentence left that names `name`, a target found absent, as if it were there: a list
    ("Here are the optic disc and the vessels.") loses the name and is followed by "The optic disc is not
    present in this image."; any other sentence naming it without a negation becomes that sentence."""
    absent = f"The {name} is not present in this image."
    mention = re.compile(rf"\bthe {re.escape(name)}\b", re.IGNORECASE)
    out, changed = [], False
    for sentence in _SENTENCE.split(text.strip()) if text.strip() else []:
        if not mention.search(sentence) or _NEGATION.search(sentence):
            out.append(sentence)
            continue
        changed = True
        listed = _LIST.match(sentence)
        rest = [n for n in split_names(listed.group("list")) if not mention.fullmatch(n.strip())] if listed else []
        if rest:
            verb = "are" if len(rest) > 1 or is_plural(rest[0]) else "is"
            out.append(f"Here {verb} {join_names(rest)}.")
        if absent not in out:
            out.append(absent)
    return " ".join(out) if changed else text  # (untouched text keeps its own spacing)


_SINGULAR_ENDINGS = ("us", "ss", "is", "as", "ax", "ex")  # pancreas, thorax, fibrosis, ... are one thing


def is_plural(name: str) -> bool:
    """Whether a target name is grammatically plural ("glands", "nuclei", "ground glass opacities")."""
    last = name.lower().split()[-1] if name.split() else ""
    return last in {"nuclei", "cells", "bacteria", "data"} or (last.endswith("s") and not last.endswith(_SINGULAR_ENDINGS))


def grammar(text: str, names: list[str]) -> str:
    """Verb agreement for plural target names in the trained answer forms ("The glands is in ..." ->
    "The glands are in ..."; "is not present" -> "are not present"); other text is left as written."""
    for name in dict.fromkeys(names):
        if not is_plural(name):
            continue
        n = re.escape(name)
        text = re.sub(rf"\b(the {n}) is\b", r"\1 are", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b(the {n}) (?:<seg>\s*)?is\b", r"\1 are", text, flags=re.IGNORECASE)
    return text


def _check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise RCMedInputError("prompt", "empty prompt; say what to segment or ask")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RCMedInputError("prompt", f"prompt of {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt.strip()


def mask_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] inclusive pixels of a 2-D mask's foreground; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def save_answer_json(path: Path, data: dict[str, object]) -> None:
    from rcmed.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
