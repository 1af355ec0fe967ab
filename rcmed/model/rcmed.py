"""RCMed: wires the vision encoder, language model, mask decoder and the closed loop together.

    image (B, 3, S, S) --image_encoder--> levels (fine..coarse) + embedding (B, 256, S/4, S/4)
    embedding --pool to G x G, projector--> visual tokens at the <image> slots of the prompt
    LM --hidden state at each <region> slot (after each <seg>)--> seg_query --> mask_decoder
        --> mask logits, box, IoU, presence per target (many targets in one decoder pass)
    loop round t > 1: region_pooler(mask_{t-1}, levels) --> written into the <region> slots,
        LM re-reads --> refined states --> decoder again, with mask_{t-1} as its dense prompt
        (`loop_residual`: the query is round 1's plus loop_delta(refined - round 1's states), zero at the start)

This file holds no math of its own beyond the wiring; see `vision.py`, `decoder.py`,
`correlation.py`, `losses.py`, `processing.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rcmed.model.config import SPECIAL_TOKENS, RCMedConfig
from rcmed.model.correlation import RegionPooler, SegQuery
from rcmed.model.decoder import DecoderOutput
from rcmed.model.language import build_language_model
from rcmed.model.losses import rcmed_loss
from rcmed.model.medsam import build_sam_parts, load_litemedsam_into
from rcmed.model.processing import Batch, Processor  # Batch: re-exported, defined beside build_batch
from rcmed.model.vision import VisionFeatures

LOOP_VARIANTS = ("full", "no-region", "no-mask-prompt")  # see RCMedModel._rounds


@dataclass
class TargetOutput:
    """One `<seg>` of a generated answer: the words before it, and the decoder's last round."""

    name: str
    mask_logits: torch.Tensor  # (S, S)
    box: torch.Tensor  # (4,) normalised x0, y0, x1, y1
    score: float  # predicted mask quality (IoU head)
    presence: float  # probability that the target is in the image


@dataclass
class Generation:
    """`text`: the answer for people (special tokens removed); `answer`: the same with one `<seg>`
    per target, as in training data (used to decode the same answer on other slices)."""

    text: str
    answer: str = ""
    targets: list[TargetOutput] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


class RCMedModel(nn.Module):
    def __init__(self, config: RCMedConfig) -> None:
        super().__init__()
        self.config = cfg = config
        v = cfg.vision
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam_parts(v)
        if cfg.pretrained_vision:
            load_litemedsam_into(self)
        self.lm, self.tokenizer = build_language_model(cfg)
        hidden = self.lm.get_input_embeddings().weight.shape[1]
        self.projector = nn.Sequential(nn.Linear(v.neck_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.seg_query = SegQuery(hidden, v.neck_dim)
        self.region_pooler = RegionPooler(self.image_encoder.level_dims, hidden)
        self.loop_delta = None
        if cfg.loop_residual:  # zero at the start (as ControlNet's zero convolutions): round 2 asks as round 1 did
            self.loop_delta = nn.Linear(hidden, v.neck_dim)
            nn.init.zeros_(self.loop_delta.weight)
            nn.init.zeros_(self.loop_delta.bias)
        self.processor = Processor(self.tokenizer, cfg.visual_grid**2)
        self._freeze()

    # ------------------------------------------------------------------ set-up
    def _freeze(self) -> None:
        cfg = self.config
        # SAM's three extra multimask outputs are never used (one mask per target); the point and
        # box embeddings keep their pretrained values (box prompts reuse them frozen).
        for i in range(1, self.mask_decoder.num_mask_tokens):
            self.mask_decoder.output_hypernetworks_mlps[i].requires_grad_(False)
        for emb in [*self.prompt_encoder.point_embeddings, self.prompt_encoder.not_a_point_embed]:
            emb.requires_grad_(False)
        if cfg.freeze_vision:
            self.image_encoder.requires_grad_(False)
            self.prompt_encoder.requires_grad_(False)
        if cfg.freeze_lm:
            self.lm.requires_grad_(False)
            emb = self.lm.get_input_embeddings().weight
            emb.requires_grad_(True)  # only the special-token rows learn: others get a zero gradient
            rows = torch.zeros(emb.shape[0], 1)
            rows[self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))] = 1.0
            emb.register_hook(lambda g, r=rows: g * r.to(g.device, g.dtype))
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            from rcmed.model.language import quiet_transformers

            with quiet_transformers():
                self.lm = get_peft_model(self.lm, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                                             target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
            self.lm.get_input_embeddings().weight.requires_grad_(True)

    # ------------------------------------------------------------------ pieces
    def encode(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """(B, 3, S, S) in [0, 1] -> multi-scale features (run once per image)."""
        if self.config.freeze_vision:
            with torch.no_grad():
                self.image_encoder.eval()
                return self.image_encoder(pixel_values)
        return self.image_encoder(pixel_values)

    def visual_tokens(self, feats: VisionFeatures) -> torch.Tensor:
        g = self.config.visual_grid
        pooled = F.adaptive_avg_pool2d(feats.embedding, g).flatten(2).transpose(1, 2)  # (B, G*G, C)
        return self.projector(pooled)

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with visual tokens at `<image>` slots and, when given, region
        embeddings (K, hidden) at the `<region>` slots (batch then position order)."""
        x = self.lm.get_input_embeddings()(input_ids)
        img = input_ids == self.processor.image_id
        x = x.masked_scatter(img[..., None], visual.to(x.dtype).reshape(-1, x.shape[-1])[: int(img.sum())])
        if regions is not None:
            reg = input_ids == self.processor.region_id
            x = x.clone()
            x[reg] = regions.to(x.dtype)
        return x

    def run_lm(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None):
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, output_hidden_states=True)

    def decode(self, feats: VisionFeatures, queries: torch.Tensor, image_index: torch.Tensor,
               prev_logits: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None) -> DecoderOutput:
        """Decode K targets in one pass. queries (K, C); prev_logits (K, S, S) from the previous
        round become the dense (mask) prompt; boxes (K, 4) optional pixel x0, y0, x1, y1 in the
        model input, added as SAM box tokens next to each target's text query; points ((K, P, 2)
        pixel x, y; (K, P) labels 1 = inside, 0 = outside) are added as SAM point tokens."""
        k = queries.shape[0]
        sparse = queries[:, None, :]
        if points is not None:
            sparse = torch.cat([sparse, self.prompt_encoder._embed_points(points[0].float(), points[1].float(),
                                                                          pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self.prompt_encoder._embed_boxes(boxes.to(queries.dtype))], dim=1)
        if prev_logits is not None:
            _, dense = self.prompt_encoder(None, None, prev_logits[:, None])
        else:
            _, dense = self.prompt_encoder(None, None, None, batch=k)
        return self.mask_decoder(feats.embedding, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 fine=feats.levels[0], image_index=image_index)

    def round_query(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """The decoder query (K, C) of a loop round after the first, from round 1's states `first` (K, H) at the
        targets' slots and the states after re-reading the region `later` (K, H): `seg_query(later)`, or with
        `loop_residual` round 1's query plus `loop_delta(later - first)`."""
        if self.loop_delta is None:
            return self.seg_query(later)
        return self.seg_query(first) + self.loop_delta(later - first)

    def _slots(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nonzero(input_ids == self.processor.region_id, as_tuple=True)

    def _rounds(self, feats: VisionFeatures, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                visual: torch.Tensor, first_hidden: torch.Tensor, rounds: int,
                boxes: torch.Tensor | None = None, points=None, loop: str = "full") -> list[DecoderOutput]:
        """Decoder outputs of every loop round, given round 1's last hidden states. After round 1 each round
        feeds the found region back to the language model (region features at the `<region>` slots) and gives
        the previous mask logits to the decoder as its dense prompt. `loop` switches one part off, for
        ablations (`LOOP_VARIANTS`): "no-region" (the language side is not told the region: round 1's states
        are reused) or "no-mask-prompt" (the decoder is not given the previous mask)."""
        if loop not in LOOP_VARIANTS:
            raise ValueError(f"unknown loop variant {loop!r}; use one of {LOOP_VARIANTS}")
        b_idx, pos = self._slots(input_ids)
        outs = [self.decode(feats, self.seg_query(first_hidden[b_idx, pos]), b_idx, boxes=boxes, points=points)]
        for _ in range(1, rounds):
            prev = outs[-1].masks[:, 0]
            h = first_hidden if loop == "no-region" else self.reread(feats, input_ids, attention_mask, visual, prev, b_idx)
            outs.append(self.decode(feats, self.round_query(first_hidden[b_idx, pos], h[b_idx, pos]), b_idx,
                                    prev_logits=None if loop == "no-mask-prompt" else prev, boxes=boxes, points=points))
        return outs

    def reread(self, feats: VisionFeatures, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               visual: torch.Tensor, prev_logits: torch.Tensor, b_idx: torch.Tensor) -> torch.Tensor:
        """The closed loop's way back: the language model's last hidden states (B, T, H) with the region of each
        target's mask logits `prev_logits` (K, S, S) pooled from the image features into its `<region>` slot."""
        regions = self.region_pooler(torch.sigmoid(prev_logits)[:, None], feats.levels, b_idx)
        return self.run_lm(self.embed(input_ids, visual, regions), attention_mask).hidden_states[-1]

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.features is not None and not self.config.freeze_vision:
            raise ValueError("precomputed features need a frozen encoder (freeze_vision)")
        feats = batch.features if batch.features is not None else self.encode(batch.pixel_values)
        visual = self.visual_tokens(feats)
        out = self.run_lm(self.embed(batch.input_ids, visual), batch.attention_mask, batch.labels)
        b_idx, _ = self._slots(batch.input_ids)
        if b_idx.numel() != batch.presence.numel():
            raise ValueError(f"{b_idx.numel()} <region> slots but {batch.presence.numel()} targets in the batch")
        rounds = self._rounds(feats, batch.input_ids, batch.attention_mask, visual, out.hidden_states[-1],
                              self.config.loop_rounds) if b_idx.numel() else []
        consistency = None
        if rounds and batch.has_mask.any():
            # The region the loop feeds back for the predicted mask should read like the true
            # region's: cosine distance of the two region embeddings, features frozen here so the
            # term trains the mask, not a collapse of the features.
            m = batch.has_mask
            levels = [f.detach() for f in feats.levels]
            pred = self.region_pooler(torch.sigmoid(rounds[-1].masks[m]), levels, b_idx[m])
            true = self.region_pooler(batch.target_masks[m][:, None], levels, b_idx[m]).detach()
            consistency = (1 - F.cosine_similarity(pred, true, dim=-1)).mean()
        as_dicts = [{"masks": r.masks[:, 0], "box": r.box, "presence": r.presence, "iou": r.iou[:, 0]} for r in rounds]
        return rcmed_loss(as_dicts, out.loss, batch.target_masks, batch.has_mask, batch.target_boxes,
                          batch.presence.float(), consistency, self.config.losses)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def generate(self, pixel_values: torch.Tensor, prompt: str, max_new_tokens: int | None = None,
                 do_sample: bool = False, temperature: float = 1.0, feats: VisionFeatures | None = None,
                 rounds: int | None = None, seed: int = 0, boxes: torch.Tensor | None = None,
                 points: tuple[torch.Tensor, torch.Tensor] | None = None, loop: str = "full") -> Generation:
        """Answer `prompt` about one image (1, 3, S, S). Greedy by default; KV cache; each `<seg>`
        the LM emits is followed by a forced `<region>` slot; all targets are decoded together.
        `boxes` (1, 4) for every target or (K, 4) one per target: pixel boxes in the model input;
        `points` ((1, P, 2) xy, (1, P) labels) likewise shared by all targets or one set per target.
        `rounds` overrides the number of loop rounds, `loop` its variant (ablations; see `_rounds`)."""
        self.eval()
        feats = feats if feats is not None else self.encode(pixel_values)
        visual = self.visual_tokens(feats)
        proc = self.processor
        ids = torch.tensor([proc.prompt_ids(prompt)])
        out = self.lm(inputs_embeds=self.embed(ids, visual), use_cache=True, output_hidden_states=True)
        past = out.cache
        logits = out.logits[:, -1]
        generated: list[int] = []
        slot_hidden = []
        gen = torch.Generator().manual_seed(seed)
        limit = max_new_tokens or self.config.max_new_tokens
        forced: int | None = None
        while len(generated) < limit:
            if forced is not None:
                nxt = forced
                forced = None
            elif do_sample:
                probs = torch.softmax(logits[0] / max(temperature, 1e-5), -1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            else:
                nxt = int(logits[0].argmax())
            if nxt == self.tokenizer.eos_token_id:
                break
            generated.append(nxt)
            step = self.lm(input_ids=torch.tensor([[nxt]]), cache=past, use_cache=True, output_hidden_states=True)
            past, logits = step.cache, step.logits[:, -1]
            if nxt == proc.seg_id:
                forced = proc.region_id
            if nxt == proc.region_id:
                slot_hidden.append(step.hidden_states[-1][0, -1])
        text_ids = [t for t in generated if t != proc.region_id]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
        result = Generation(text=_clean(text), answer=text, token_ids=generated)
        if not slot_hidden:
            return result
        full = torch.cat([ids, torch.tensor([generated])], dim=1)
        first = torch.zeros(1, full.shape[1], slot_hidden[0].shape[-1])
        _, pos = self._slots(full)
        first[0, pos] = torch.stack(slot_hidden)
        k = len(slot_hidden)
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            if boxes.shape[0] == 1:
                boxes = boxes.expand(k, 4)
            elif boxes.shape[0] != k:
                raise ValueError(f"{boxes.shape[0]} boxes for {k} targets; give one box or one per target")
        if points is not None:
            xy, lab = (torch.as_tensor(points[0], dtype=torch.float32), torch.as_tensor(points[1], dtype=torch.float32))
            xy, lab = xy.reshape(-1, xy.shape[-2], 2), lab.reshape(-1, lab.shape[-1])
            if xy.shape[0] == 1:
                xy, lab = xy.expand(k, -1, -1), lab.expand(k, -1)
            elif xy.shape[0] != k:
                raise ValueError(f"{xy.shape[0]} point sets for {k} targets; give one set or one per target")
            points = (xy, lab)
        outs = self._rounds(feats, full, None, visual, first, rounds or self.config.loop_rounds, boxes=boxes, points=points,
                            loop=loop)
        final = outs[-1]
        names = _target_names(text)
        for k in range(final.masks.shape[0]):
            result.targets.append(TargetOutput(
                name=names[k] if k < len(names) else f"target {k + 1}", mask_logits=final.masks[k, 0],
                box=final.box[k], score=float(final.iou[k, 0]), presence=float(torch.sigmoid(final.presence[k]))))
        return result

    @torch.inference_mode()
    def decode_answer(self, pixel_values: torch.Tensor, input_ids: list[int], feats: VisionFeatures | None = None,
                      rounds: int | None = None, loop: str = "full") -> DecoderOutput:
        """Decode a fixed (prompt + answer) token sequence on a batch of images (B, 3, S, S):
        targets come out batch-major, K per image (last loop round). `feats`: the images' encoder
        features when already computed; `rounds` overrides the number of closed-loop rounds."""
        self.eval()
        b = pixel_values.shape[0]
        feats = feats if feats is not None else self.encode(pixel_values)
        visual = self.visual_tokens(feats)
        ids = torch.tensor([input_ids]).expand(b, -1)
        h = self.run_lm(self.embed(ids, visual), None).hidden_states[-1]
        return self._rounds(feats, ids, None, visual, h, rounds or self.config.loop_rounds, loop=loop)[-1]

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What fine-tuning changed: parameters that require grad (of a frozen embedding only the
        special-token rows), plus the encoder's BatchNorm statistics when the encoder trains."""
        state = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if self.config.freeze_lm and name.endswith("embed_tokens.weight"):
                ids = self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
                state["special_token_rows"] = p.detach()[ids].clone()
                continue
            state[name] = p.detach().clone()
        if not self.config.freeze_vision:
            # BatchNorm statistics change while the encoder trains; without them a resumed or
            # reloaded model would not be the trained one.
            for name, buf in self.image_encoder.named_buffers():
                if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    state[f"image_encoder.{name}"] = buf.detach().clone()
        return state

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from rcmed.io.atomic import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.trainable_state_dict().items()}, str(tmp))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **changes) -> "RCMedModel":
        """The model saved in `folder`; `changes`: config fields to change first (e.g. `loop_residual=True`: a
        part the saved weights lack is added as built, here zero)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = RCMedConfig.from_json((folder / "config.json").read_text())
        for key, value in changes.items():
            if not hasattr(cfg, key):
                raise ValueError(f"no config field {key!r}")
            setattr(cfg, key, value)
        model = cls(cfg)
        model.load_trainable(dict(load_file(str(folder / "model.safetensors"))))
        return model.eval()

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` saved (over the pretrained or random base)."""
        state = dict(state)
        rows = state.pop("special_token_rows", None)
        _, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"weights the model does not have: {unexpected[:5]}")
        if rows is not None:
            ids = self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
            with torch.no_grad():
                self.lm.get_input_embeddings().weight[ids] = rows


def _clean(text: str) -> str:
    return " ".join(text.replace("<seg>", "").replace("<region>", "").split()).replace(" .", ".").replace(" ,", ",")


def _target_names(text: str) -> list[str]:
    """The words naming each `<seg>`: the phrase after the last 'the'/'a'/punctuation before it."""
    names = []
    for chunk in text.split("<seg>")[:-1]:
        words = chunk.replace(",", " , ").replace(".", " . ").split()
        phrase: list[str] = []
        for w in reversed(words):
            if w.lower() in {"the", "a", "an", ",", ".", ":", "are", "is", "of", "and"} or w.isdigit():
                break
            phrase.insert(0, w)
        names.append(" ".join(phrase) or "target")
    return names
