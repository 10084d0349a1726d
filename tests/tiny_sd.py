"""A tiny random Stable Diffusion pipeline, built offline from configs (as diffusers' own
tests do), so loaders and guidance can be tested without downloading anything.

Native image size: VAE with 2 blocks (downsamples by 2) x UNet sample_size 32 = 64 pixels.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


#: A few merges so the BPE actually merges; each result is added to the vocabulary.
_MERGES = [("t", "h"), ("th", "e</w>"), ("v", "i"), ("vi", "e"), ("vie", "w</w>"),
           ("f", "r"), ("fr", "o"), ("o", "n"), ("b", "a"), ("s", "i")]


def tiny_tokenizer():
    """A byte-level CLIPTokenizer with ~520 tokens: every byte alone and word-final, a few
    merges, and CLIP's two special tokens. Any text tokenizes without unknown tokens.

    Built from vocab.json / merges.txt files passed positionally: the one constructor call
    that both transformers 4 (vocab_file, merges_file) and 5 (vocab, merges) accept."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    tokens += [a + b for a, b in _MERGES]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES),
                               encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    """The StableDiffusionPipeline components, random but deterministic for a seed."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=len(tokenizer), max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(text_config)
    # Stable Diffusion's own noise schedule, so timesteps mean what they mean for real models.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def build_tiny_sd(path: str | Path, seed: int = 0) -> str:
    """Save a tiny random SD pipeline as a diffusers folder at `path`; returns the path."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(seed), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return str(path)
