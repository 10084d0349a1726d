"""A tiny random DeepFloyd IF stage I pipeline, built offline from configs, so the IF loader and
guidance can be tested without downloading anything.

It has IF's structure at toy sizes: a pixel-space UNet on 3 channels predicting epsilon and a
learned variance (6 output channels), T5 hidden states projected to the cross-attention width
(`encoder_hid_dim` != `cross_attention_dim`, as 4096 -> 1280 in IF-I-XL) with IF's text
addition embedding, a T5 v1.1 style (gated-GELU) encoder, IF's DDPM scheduler configuration,
and a T5 tokenizer saved as tokenizer.json (a `tokenizers` Unigram model: no sentencepiece).
Native size: UNet sample_size 32 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Words the tiny tokenizer knows whole (with the SentencePiece word-start mark); anything else
#: falls back to single characters, and characters it lacks to <unk>. No piece twice ("a" is
#: a character piece), or SentencePiece itself refuses the model.
_WORDS = ("red", "blue", "cube", "chair", "of", "the", "front", "side", "back", "overhead",
          "view", "blurry", "photo", "dog", "cat")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"
NATIVE_SIZE = 32
TEXT_WIDTH = 32            # T5 d_model (IF-I-XL: 4096)
CROSS_ATTENTION_WIDTH = 64  # the UNet's own width for text (IF-I-XL: 1280)


def tiny_tokenizer_json() -> str:
    """A T5-layout Unigram tokenizer as tokenizer.json text: <pad>=0, </s>=1, <unk>=2, then
    words and characters; "</s>" is appended to every sequence, as T5's tokenizer does."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in _WORDS]
    vocab += [(c, -6.0) for c in _CHARS] + [("\u2581" + c, -5.0) for c in _CHARS]
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tok.to_str()


def save_tiny_tokenizer(folder: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json (IF's tokenizer class, T5's special
    tokens, no sentinel tokens) into `folder`; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    text = tiny_tokenizer_json()
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 77, "extra_ids": 0,
              "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(json.loads(text)["model"]["vocab"])


def save_spiece_tokenizer(folder: Path) -> None:
    """The same vocabulary in the real repos' format: tokenizer/spiece.model (a SentencePiece
    ModelProto, written with protobuf alone) and tokenizer_config.json, no tokenizer.json."""
    from transformers.convert_slow_tokenizer import import_protobuf

    folder.mkdir(parents=True, exist_ok=True)
    vocab = json.loads(tiny_tokenizer_json())["model"]["vocab"]
    proto = import_protobuf().ModelProto()
    proto.trainer_spec.model_type = 1          # UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 2, 1, 0
    proto.trainer_spec.bos_id = -1
    proto.normalizer_spec.add_dummy_prefix = True
    for i, (text, score) in enumerate(vocab):
        piece = proto.pieces.add()
        piece.piece, piece.score = text, score
        piece.type = 2 if i == 2 else 3 if i < 2 else 1   # UNKNOWN, CONTROL, NORMAL
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": 77, "extra_ids": 0,
              "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def tiny_unet(seed: int = 0):
    """IF stage I's UNet options (diffusers' IF test configuration) at toy widths."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=NATIVE_SIZE, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3, out_channels=6, cross_attention_dim=CROSS_ATTENTION_WIDTH,
        encoder_hid_dim=TEXT_WIDTH, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu")


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    """A 2-layer T5 v1.1-style encoder (gated GELU, untied), TEXT_WIDTH wide."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=TEXT_WIDTH, d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    return T5EncoderModel(config)


def if_scheduler():
    """IF-I-XL's scheduler configuration: cosine betas, learned variance range, thresholding."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         beta_start=0.0001, beta_end=0.02, thresholding=True,
                         dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                         prediction_type="epsilon", variance_type="learned_range")


def build_tiny_if(path: str | Path, seed: int = 0) -> str:
    """Save a tiny random IF stage I pipeline as a diffusers folder at `path` (model_index.json
    of an IFPipeline, without safety checker or watermarker); returns the path."""
    from diffusers import IFPipeline
    from transformers import T5TokenizerFast

    path = Path(path)
    vocab_size = save_tiny_tokenizer(path / "tokenizer")
    tokenizer = T5TokenizerFast.from_pretrained(str(path / "tokenizer"))
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=tiny_text_encoder(vocab_size, seed),
                      unet=tiny_unet(seed), scheduler=if_scheduler(), safety_checker=None,
                      feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return str(path)
