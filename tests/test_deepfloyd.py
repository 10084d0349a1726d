"""DeepFloyd IF stage I guidance on a tiny random IF folder built offline (see tiny_if.py).

A random model gives no meaningful images; these tests check what the loop relies on: the
folder loads as the real repos do (fp16 variant files preferred, T5 parked on the CPU), the
pixel-space gradient is the guided epsilon residual of the first 3 UNet channels pulled back
through the resize, it is finite, non-zero and reproducible for SDS and SJC, with and without
Perp-Neg, one training step moves the field, and every bad input says what to do.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig, RunConfig
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.guidance.deepfloyd import (
    DEFAULT_GUIDANCE_SCALE,
    DeepFloydGuidance,
    load_if_components,
)
from dreamsculpt.optimize import Trainer
from tiny_if import (
    NATIVE_SIZE,
    build_tiny_if,
    save_spiece_tokenizer,
    tiny_text_encoder,
    tiny_unet,
)

FRONT = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)  # Blender's Front view: camera on -Y
BACK = Cameras.from_orbit(90.0, 0.0, 3.0, 40.0)
TWO = Cameras.from_orbit([-90.0, 45.0], [0.0, 20.0], 3.0, 40.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_if(tmp_path_factory.mktemp("tiny-if") / "model")


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_if_components(tiny_model, "cpu", torch.float32)


def make_guidance(components, **overrides) -> DeepFloydGuidance:
    config = GuidanceConfig(prior="if", prompt="A red cube", negative="blurry", **overrides)
    return DeepFloydGuidance(config, components=components)


def images_of(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def unet_batches(components) -> tuple[list[int], object]:
    """The batch sizes the UNet is run on, recorded by a forward pre-hook (and its handle)."""
    seen: list[int] = []
    handle = components.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle


def test_loads_the_folder_offline_frozen_with_t5_parked_on_the_cpu(components):
    from transformers import T5EncoderModel, T5TokenizerFast

    assert components.native_size == NATIVE_SIZE and components.prediction_type == "epsilon"
    assert components.unet.config.out_channels == 6  # eps and the learned variance
    assert isinstance(components.text_encoder, T5EncoderModel)
    assert isinstance(components.tokenizer, T5TokenizerFast)
    for module in (components.unet, components.text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert components.text_encoder.device.type == "cpu" and components.unet.dtype == torch.float32
    # IF's cosine ("squaredcos_cap_v2") schedule, not SD's: abar(0.5 T) ~ cos(pi/4)^2 = 0.5
    assert components.alphas_cumprod.shape == (1000,)
    assert abs(float(components.alphas_cumprod[500]) - 0.5) < 0.01


def test_gradient_is_finite_non_zero_and_reproducible_for_a_seed(components):
    guidance = make_guidance(components)
    assert guidance.scale == DEFAULT_GUIDANCE_SCALE == 20.0 and guidance.background == "learned"
    images = images_of(2, 4 * NATIVE_SIZE)  # renders larger than the model: box-averaged
    out = guidance.grad(images, TWO, 0.0, torch.Generator().manual_seed(7))
    again = guidance.grad(images, TWO, 0.0, torch.Generator().manual_seed(7))
    other = guidance.grad(images, TWO, 0.0, torch.Generator().manual_seed(8))

    assert out.grad.shape == images.shape and not out.grad.requires_grad
    assert torch.isfinite(out.grad).all() and out.loss > 0
    assert (out.grad != 0).float().mean() > 0.99  # every render pixel reaches the model
    assert out.t.shape == (2,) and ((0.02 <= out.t) & (out.t <= 0.98)).all()
    assert torch.equal(out.grad, again.grad) and out.loss == again.loss
    assert not torch.allclose(out.grad, other.grad)


def test_renders_smaller_than_the_model_get_a_gradient_of_their_own_size(components):
    guidance = make_guidance(components, view_dependent=False)
    images = torch.rand(2, 3, 16, 24)
    out = guidance.grad(images, TWO, 0.5, torch.Generator().manual_seed(0))
    assert out.grad.shape == (2, 3, 16, 24) and torch.isfinite(out.grad).all()
    assert out.grad.abs().max() > 0


def test_sds_gradient_is_the_guided_residual_of_the_first_three_channels(components):
    """At the native size the resize is the identity and x = 2 img - 1, so d/dimg = 2 g with
    g = (1 - abar) (e_u + s (e_c - e_u) - noise), e from UNet channels 0-2, times and noise drawn
    from the generator in the order the guidance draws them."""
    guidance = make_guidance(components, view_dependent=False)
    images = images_of(1, NATIVE_SIZE)
    out = guidance.grad(images, FRONT, 0.25, torch.Generator().manual_seed(3))

    gen = torch.Generator().manual_seed(3)
    t = guidance.schedule.sample(1, 0.25, gen)
    step = (t * 999).round().long()
    noise = torch.randn(images.shape, generator=gen)
    ab = components.alphas_cumprod[step].view(-1, 1, 1, 1)
    noisy = ab.sqrt() * (2 * images - 1) + (1 - ab).sqrt() * noise
    with torch.no_grad():
        pred = components.unet(noisy.repeat(2, 1, 1, 1), step.repeat(2),
                               encoder_hidden_states=guidance.prompts.embeddings(FRONT)).sample
    e_u, e_c = pred[:, :3].chunk(2)
    expected = 2 * (1 - ab) * (e_u + 20.0 * (e_c - e_u) - noise)
    torch.testing.assert_close(out.grad, expected, rtol=1e-4, atol=1e-5)


def test_sds_and_sjc_both_work_and_run_the_batches_they_should(components):
    images = images_of(2, NATIVE_SIZE)
    seen, handle = unet_batches(components)
    try:
        sds = make_guidance(components, score="sds").grad(images, TWO, 0.3, torch.Generator().manual_seed(4))
        sjc = make_guidance(components, score="sjc").grad(images, TWO, 0.3, torch.Generator().manual_seed(4))
    finally:
        handle.remove()
    # [uncond, positive] x B images; SJC averages 2 noise draws in one batched call
    assert seen == [2 * 2, 2 * 2 * 2]
    for out in (sds, sjc):
        assert torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
    assert not torch.allclose(sds.grad, sjc.grad)


def test_perp_neg_on_and_off_both_work_and_differ(components):
    images = images_of(2, NATIVE_SIZE)
    seen, handle = unet_batches(components)
    try:
        plain = make_guidance(components).grad(images, TWO, 0.3, torch.Generator().manual_seed(5))
        perp = make_guidance(components, perp_neg=True).grad(images, TWO, 0.3, torch.Generator().manual_seed(5))
    finally:
        handle.remove()
    assert seen == [2 * 2, 5 * 2]  # Perp-Neg adds the three ring views' prompts as negatives
    assert torch.isfinite(perp.grad).all() and perp.grad.abs().max() > 0
    assert not torch.allclose(plain.grad, perp.grad)


def test_view_dependent_prompts_make_front_and_back_differ(components):
    images = images_of(1, NATIVE_SIZE, seed=2)
    views = make_guidance(components)
    front = views.grad(images, FRONT, 0.0, torch.Generator().manual_seed(5))
    back = views.grad(images, BACK, 0.0, torch.Generator().manual_seed(5))
    assert not torch.allclose(front.grad, back.grad)
    plain = make_guidance(components, view_dependent=False)
    front = plain.grad(images, FRONT, 0.0, torch.Generator().manual_seed(5))
    back = plain.grad(images, BACK, 0.0, torch.Generator().manual_seed(5))
    assert torch.allclose(front.grad, back.grad)  # one prompt: the camera does not matter


@pytest.mark.parametrize("score", ["sds", "sjc"])
def test_one_trainer_step_changes_the_field_and_keeps_gradients_finite(components, score):
    config = RunConfig()
    config.field.grid_resolution = 16
    config.render.resolution, config.render.samples_per_ray = 24, 16
    config.render.occupancy_resolution = 16
    config.train.steps, config.train.checkpoint_every = 10, 0
    config.guidance = GuidanceConfig(prior="if", prompt="a chair", score=score)
    trainer = Trainer(config, DeepFloydGuidance(config.guidance, components=components))
    before = {k: v.detach().clone() for k, v in trainer.field.state_dict().items()}

    loss = trainer.train_step()

    assert math.isfinite(loss) and loss > 0
    after = trainer.field.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "every field parameter moves"
    grads = [p.grad for group in trainer.optimizer.param_groups for p in group["params"]]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert trainer.field.planes.grad.abs().max() > 0


def test_fp16_variant_files_are_preferred_and_cast_to_the_run_dtype(tiny_model, tmp_path):
    """As in the real repos: fp32 files and *.fp16.* files side by side; the fp16 ones are
    read (here: other weights than the fp32 files, so it shows) and cast to float32."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    unet, text = tiny_unet(seed=1).half(), tiny_text_encoder(vocab_size=100, seed=1).half()
    unet.save_pretrained(folder / "unet", variant="fp16")
    text.save_pretrained(folder / "text_encoder", variant="fp16")

    parts = load_if_components(str(folder), "cpu", torch.float32)

    assert parts.unet.dtype == torch.float32
    assert torch.equal(parts.unet.conv_in.weight, unet.conv_in.weight.float())
    assert parts.text_encoder.shared.weight.dtype == torch.float32
    assert torch.equal(parts.text_encoder.shared.weight, text.shared.weight.float())


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers'
def test_a_hub_id_loads_offline_from_the_cache_fp16_first(tiny_model, tmp_path, monkeypatch):
    """A hub id is read from the Hugging Face cache (the layout huggingface_hub writes) with no
    network: the UNet from its fp16 variant files, the text encoder, which has none in this
    cache, from its fp32 ones."""
    repo, commit = "dreamsculpt-tests/tiny-if", "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "hub" / "models--dreamsculpt-tests--tiny-if"
    snapshot = Path(shutil.copytree(tiny_model, cached / "snapshots" / commit))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(commit)
    unet = tiny_unet(seed=1).half()
    unet.save_pretrained(snapshot / "unet", variant="fp16")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    parts = load_if_components(repo)

    assert parts.source == repo and parts.native_size == NATIVE_SIZE
    assert torch.equal(parts.unet.conv_in.weight, unet.conv_in.weight.float())
    fp32 = load_if_components(tiny_model)
    assert torch.equal(parts.text_encoder.shared.weight, fp32.text_encoder.shared.weight)


def test_the_tokenizer_as_the_real_repos_ship_it(tiny_model, tmp_path):
    """The real repos' tokenizer/ holds spiece.model and no tokenizer.json. transformers reads it
    only with the sentencepiece package: without it the loader says to install it; with it the
    ids are those of the tokenizer.json version."""
    pytest.importorskip("google.protobuf")
    from transformers.utils import is_sentencepiece_available

    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    shutil.rmtree(folder / "tokenizer")
    save_spiece_tokenizer(folder / "tokenizer")
    if not is_sentencepiece_available():
        with pytest.raises(DreamsculptError, match=r"pip install sentencepiece"):
            load_if_components(str(folder))
        return
    text = "a red cube, front view"
    real = load_if_components(str(folder)).tokenizer(text).input_ids
    assert real == load_if_components(tiny_model).tokenizer(text).input_ids


def assert_says_what_to_do(error: pytest.ExceptionInfo) -> None:
    assert "--model" in str(error.value), str(error.value)


@pytest.mark.parametrize("index, says", [
    (None, "no model_index.json"),
    ({"_class_name": "StableDiffusionPipeline"}, "--prior sd"),
    ({"_class_name": "IFSuperResolutionPipeline"}, "not stage I"),
    ({"_class_name": "IFPipeline"}, "Could not load the DeepFloyd IF folder"),  # no weights
])
def test_a_folder_that_is_not_an_if_model_is_refused(tmp_path, index, says):
    if index is not None:
        (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamsculptError, match=says) as error:
        load_if_components(str(tmp_path))
    assert_says_what_to_do(error)


def test_a_single_file_is_refused_with_the_folder_to_pass(tiny_model, tmp_path):
    weights = Path(tiny_model) / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(DreamsculptError, match="no single-file format") as error:
        load_if_components(str(weights))
    assert_says_what_to_do(error)
    # A file beside a model_index.json: the message names that folder.
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))
    (tmp_path / "if-i-xl.safetensors").write_bytes(b"")
    with pytest.raises(DreamsculptError, match=f"--model {tmp_path}"):
        load_if_components(str(tmp_path / "if-i-xl.safetensors"))


def test_missing_path_and_unknown_hub_id_offline_give_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamsculptError, match="does not exist") as error:
        load_if_components(str(missing))
    assert str(missing) in str(error.value)
    assert_says_what_to_do(error)

    started = time.perf_counter()
    with pytest.raises(DreamsculptError, match="unreachable") as error:
        load_if_components("dreamsculpt-tests/no-such-if-model")
    assert "dreamsculpt-tests/no-such-if-model" in str(error.value)
    assert "licence" in str(error.value)  # IF is gated: the message says how to get it
    assert_says_what_to_do(error)
    assert time.perf_counter() - started < 10  # fails fast, no retries against the network


def test_empty_prompt_is_refused(components):
    with pytest.raises(DreamsculptError, match="prompt"):
        DeepFloydGuidance(GuidanceConfig(prior="if", prompt="  "), components=components)
