"""Shared fixtures: tiny random models built with transformers (the reference) and saved to disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKISPLIT = SHARED / "data" / "wikisplit"

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)


def needs_wikisplit():
    return pytest.mark.skipif(not (WIKISPLIT / "validation.tsv").is_file(),
                              reason=f"WikiSplit data not found at {WIKISPLIT}")


def hf_encoder_decoder(tied: bool = False, seed: int = 0, **overrides):
    """A transformers EncoderDecoderModel of BertGeneration stacks with random weights.

    transformers 5 ignores tie_encoder_decoder, so a "tied" reference model is one whose
    encoder holds the same values as its decoder (what a tied checkpoint means)."""
    import transformers as T

    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    enc = T.BertGenerationEncoder(T.BertGenerationConfig(**kw))
    dec = T.BertGenerationDecoder(T.BertGenerationConfig(**kw, is_decoder=True, add_cross_attention=True))
    model = T.EncoderDecoderModel(encoder=enc, decoder=dec)
    with torch.no_grad():  # untrained LayerNorms are all ones; perturb so bugs show
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    if tied:
        state = model.state_dict()
        with torch.no_grad():
            for key, tensor in state.items():
                if key.startswith("encoder."):
                    tensor.copy_(state["decoder.bert." + key[len("encoder."):]])
        model.config.tie_encoder_decoder = True
    model.config.decoder_start_token_id = kw.get("bos_token_id", 2)
    model.config.pad_token_id = kw.get("pad_token_id", 0)
    model.config.eos_token_id = kw.get("eos_token_id", 1)
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    return model.eval()


def ragged_batch(vocab: int = 120, seed: int = 1, lengths=(9, 6, 3)):
    """Right-padded input ids with an attention mask; pad id 0, no special ids inside."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


@pytest.fixture
def hf_untied(tmp_path):
    model = hf_encoder_decoder(tied=False)
    model.save_pretrained(tmp_path / "untied")
    return model, tmp_path / "untied"


@pytest.fixture
def hf_tied(tmp_path):
    model = hf_encoder_decoder(tied=True)
    model.save_pretrained(tmp_path / "tied")
    return model, tmp_path / "tied"


# ----------------------------------------------------------------------------------------
# A tiny saved checkpoint with a sentencepiece vocabulary (hardening tests; the app's too)
# ----------------------------------------------------------------------------------------
TINY_SPM_TEXTS = [f"The river number {i} floods every spring and farmers plant rice on its banks ."
                  for i in range(40)] + ["東京 日本語 😀 👍 مرحبا بالعالم שלום עולם café naïve"] * 5


def make_tiny_spm_checkpoint(folder: Path, max_position_embeddings: int = 32, seed: int = 0) -> Path:
    """A random 2-layer, hidden-32 EncoderDecoderModel + spiece.model saved by bertgen in `folder`."""
    import bertgen
    from bertgen.config import BertGenerationConfig, EncoderDecoderConfig
    from bertgen.tokenization import train_sentencepiece

    tok = train_sentencepiece(TINY_SPM_TEXTS, 80, folder)
    enc = BertGenerationConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=max_position_embeddings)
    config = EncoderDecoderConfig(encoder=enc, decoder=enc.as_decoder(), decoder_start_token_id=2,
                                  pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    bertgen.save(bertgen.EncoderDecoderModel(config), folder, tokenizer=tok)
    return folder


@pytest.fixture(scope="session")
def tiny_spm_checkpoint(tmp_path_factory) -> Path:
    """Session-wide tiny checkpoint folder (32 positions); treat it as read-only."""
    return make_tiny_spm_checkpoint(tmp_path_factory.mktemp("tiny-spm-checkpoint"))
