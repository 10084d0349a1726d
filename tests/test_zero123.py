"""Zero123 on a tiny random model built offline (see tiny_zero123.py).

A random model draws no meaningful views; these tests check what the engine relies on: every
loading path gives the same model, the camera embedding has the published conventions, the
sampler gives K images of the right shape and range reproducibly (batched and GeNVS-style),
reports progress and can be cancelled, SDS gives a usable gradient that depends on the
camera, and every failure says what to do.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig
from dreamsculpt.errors import CancelledError, DreamsculptError
from dreamsculpt.guidance.zero123 import (
    DEFAULT_GUIDANCE_SCALE,
    Zero123Guidance,
    camera_embedding,
    resolve_variant,
    sample_novel_views,
)
from dreamsculpt.guidance.zero123_loading import load_zero123_components
from tiny_zero123 import TINY_MEAN, build_tiny_zero123, write_ldm_checkpoint

FRONT = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)   # Blender's Front view: camera on -Y
RING = Cameras.from_orbit([-45.0, 0.0, 90.0], 0.0, 3.0, 40.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123") / "model")


@pytest.fixture(scope="module")
def parts(tiny_model):
    return load_zero123_components(tiny_model)


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    """A white image with a coloured square, [3, 64, 64] in [0, 1]."""
    image = torch.ones(3, 64, 64)
    image[:, 20:44, 16:48] = torch.tensor([0.8, 0.2, 0.1])[:, None, None]
    return image


def assert_says_what_to_do(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "--prior builtin" in message and "--model" in message, message


# --------------------------------------------------------------------------- loading

def test_folder_loads_frozen_with_its_own_settings(parts):
    assert parts.native_size == 64 and parts.latent_size == 32 and parts.clip_size == 32
    assert parts.unet.config.in_channels == 8
    assert (parts.cc_projection.in_features, parts.cc_projection.out_features) == (36, 32)
    assert parts.clip_mean == TINY_MEAN   # read from feature_extractor/, not CLIP's default
    assert parts.variant == "zero123" and parts.prediction_type == "epsilon"
    assert parts.alphas_cumprod.shape == (1000,)
    for module in (parts.unet, parts.vae, parts.image_encoder, parts.cc_projection):
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_both_converted_repo_layouts_load_the_same_projection(tiny_model, tmp_path, parts):
    other = load_zero123_components(build_tiny_zero123(tmp_path / "ashawkey",
                                                       layout="clip_camera_projection"))
    assert torch.equal(other.cc_projection.weight, parts.cc_projection.weight)
    assert torch.equal(other.cc_projection.bias, parts.cc_projection.bias)


@pytest.mark.parametrize("name", ["zero123-tiny.safetensors", "zero123-tiny.ckpt"])
def test_original_checkpoint_gives_the_folders_model(tiny_model, parts, tmp_path, name):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    single = load_zero123_components(str(write_ldm_checkpoint(folder, folder / name)))

    for part in ("unet", "vae", "image_encoder", "cc_projection"):
        ours, theirs = getattr(parts, part).state_dict(), getattr(single, part).state_dict()
        assert ours.keys() == theirs.keys(), part
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    assert single.clip_mean == parts.clip_mean
    torch.manual_seed(0)
    x, t, hidden = torch.randn(2, 8, 32, 32), torch.tensor([10, 500]), torch.randn(2, 1, 32)
    with torch.no_grad():
        expected = parts.unet(x, t, encoder_hidden_states=hidden).sample
        assert torch.equal(single.unet(x, t, encoder_hidden_states=hidden).sample, expected)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    clip_a, concat_a = parts.encode_views(image)
    clip_b, concat_b = single.encode_views(image)
    assert torch.allclose(clip_a, clip_b, atol=1e-6) and torch.equal(concat_a, concat_b)


def test_checkpoint_without_configs_beside_it_says_to_add_them(tiny_model, tmp_path):
    checkpoint = write_ldm_checkpoint(tiny_model, tmp_path / "zero123-tiny.safetensors")
    with pytest.raises(DreamsculptError, match="diffusers folder with the matching configs") as error:
        load_zero123_components(str(checkpoint))   # tiny weights vs the real architecture
    assert str(checkpoint) in str(error.value)
    assert_says_what_to_do(error)


def test_variant_auto_detection_and_override(tiny_model, tmp_path):
    assert resolve_variant("stabilityai/stable-zero123") == "stable_zero123"
    assert resolve_variant("/models/Stable_Zero123/stable_zero123.ckpt") == "stable_zero123"
    assert resolve_variant("ashawkey/zero123-xl-diffusers") == "zero123"
    assert resolve_variant("stabilityai/stable-diffusion-2-1-base") == "zero123"
    assert resolve_variant("ashawkey/zero123-xl-diffusers", "stable_zero123") == "stable_zero123"
    with pytest.raises(DreamsculptError, match="auto, zero123 or stable_zero123"):
        resolve_variant("x", "zero-one-two-three")
    named = Path(shutil.copytree(tiny_model, tmp_path / "stable-zero123-tiny"))
    assert load_zero123_components(str(named)).variant == "stable_zero123"
    assert load_zero123_components(str(named), variant="zero123").variant == "zero123"


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamsculptError, match="does not exist") as error:
        load_zero123_components(str(missing))
    assert str(missing) in str(error.value)
    assert_says_what_to_do(error)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(DreamsculptError, match="model_index.json") as error:
        load_zero123_components(str(tmp_path))
    assert_says_what_to_do(error)


def test_stable_diffusion_folder_is_not_a_zero123_folder(tiny_sd_path):
    with pytest.raises(DreamsculptError, match="not a Zero123 model") as error:
        load_zero123_components(tiny_sd_path)
    assert "cc_projection" in str(error.value)
    assert_says_what_to_do(error)


def test_incomplete_zero123_folder_is_refused(tiny_model, tmp_path):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    shutil.rmtree(folder / "unet")
    with pytest.raises(DreamsculptError, match="Could not load the Zero123 folder") as error:
        load_zero123_components(str(folder))
    assert_says_what_to_do(error)


@pytest.mark.parametrize("name, content, expected", [
    ("weights.txt", b"hello", "not a .safetensors or .ckpt"),
    ("zero123.ckpt", b"not a zip or a pickle", "Could not read"),
])
def test_files_that_are_not_checkpoints_are_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DreamsculptError, match=expected) as error:
        load_zero123_components(str(path))
    assert_says_what_to_do(error)


def test_stable_diffusion_checkpoint_is_not_a_zero123_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4),
               "first_stage_model.decoder.conv_out.bias": torch.zeros(3)}, str(path))
    with pytest.raises(DreamsculptError, match="not an original Zero123 checkpoint") as error:
        load_zero123_components(str(path))
    assert "CLIP image encoder" in str(error.value) and "camera projection" in str(error.value)
    assert_says_what_to_do(error)


def test_unreachable_hub_id_gives_one_clear_error():
    started = time.perf_counter()
    with pytest.raises(DreamsculptError, match="unreachable") as error:
        load_zero123_components("dreamsculpt-tests/no-such-zero123")
    assert "dreamsculpt-tests/no-such-zero123" in str(error.value)
    assert_says_what_to_do(error)
    assert time.perf_counter() - started < 10


# --------------------------------------------------------------------------- camera embedding

def test_zero123_camera_embedding_on_hand_checked_numbers():
    # Reference: front (azimuth -90, elevation 0, distance 3). Target: azimuth 0 (90 degrees
    # further counter-clockwise), 30 degrees up, distance 4.
    # Δpolar = (90 - 30) - (90 - 0) = -30 deg = -pi/6; Δazimuth = 0 - (-90) = 90 deg:
    # sin 1, cos 0; Δdistance = 0.5 * (4 - 3) = 0.5 (zero123 objects are half our size).
    target = Cameras.from_orbit(0.0, 30.0, 4.0, 40.0)
    got = camera_embedding(FRONT, target, "zero123")
    assert torch.allclose(got, torch.tensor([[-math.pi / 6, 1.0, 0.0, 0.5]]), atol=1e-6)
    # The other way round (azimuth -180 seen from -90): sin(-90 deg) = -1.
    back = camera_embedding(FRONT, Cameras.from_orbit(-180.0, 0.0, 3.0, 40.0), "zero123")
    assert torch.allclose(back, torch.tensor([[0.0, -1.0, 0.0, 0.0]]), atol=1e-6)


def test_stable_zero123_uses_the_reference_polar_angle_instead_of_distance():
    # Reference 30 degrees up: its polar angle is 90 - 30 = 60 deg = pi/3, for every target.
    reference = Cameras.from_orbit(10.0, 30.0, 3.0, 40.0)
    targets = Cameras.from_orbit([10.0, 190.0], [30.0, 0.0], [3.0, 5.0], 40.0)
    got = camera_embedding(reference, targets, "stable_zero123")
    expected = torch.tensor([[0.0, 0.0, 1.0, math.pi / 3],
                             [math.pi / 6, 0.0, -1.0, math.pi / 3]])
    assert torch.allclose(got, expected, atol=1e-6)


# --------------------------------------------------------------------------- novel views

def test_novel_views_shape_range_reproducible_and_distinct(parts, reference):
    calls = []
    views = sample_novel_views(parts, reference, FRONT, RING, steps=3,
                               generator=torch.Generator().manual_seed(0),
                               on_step=lambda done, total: calls.append((done, total)))
    again = sample_novel_views(parts, reference, FRONT, RING, steps=3,
                               generator=torch.Generator().manual_seed(0))
    other = sample_novel_views(parts, reference, FRONT, RING, steps=3,
                               generator=torch.Generator().manual_seed(1))
    assert views.shape == (3, 3, 64, 64)
    assert views.min() >= 0.0 and views.max() <= 1.0 and torch.isfinite(views).all()
    assert torch.equal(views, again) and not torch.allclose(views, other)
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[1], views[2])
    assert calls == [(3, 9), (6, 9), (9, 9)]   # one batched step = 3 view-steps


def test_autoregressive_views_condition_on_the_views_already_made(parts, reference):
    calls = []
    kwargs = {"steps": 2, "generator": torch.Generator().manual_seed(0)}
    views = sample_novel_views(parts, reference, FRONT, RING, autoregressive=True,
                               on_step=lambda done, total: calls.append((done, total)), **kwargs)
    again = sample_novel_views(parts, reference, FRONT, RING, autoregressive=True,
                               steps=2, generator=torch.Generator().manual_seed(0))
    batched = sample_novel_views(parts, reference, FRONT, RING,
                                 steps=2, generator=torch.Generator().manual_seed(0))
    assert views.shape == (3, 3, 64, 64) and views.min() >= 0.0 and views.max() <= 1.0
    assert torch.equal(views, again)
    assert calls == [(i, 6) for i in range(1, 7)]
    # View 0 (45 degrees from the reference) comes first, on the reference alone, with the
    # same starting noise as in the batched run; the later ones also see the views made.
    assert torch.allclose(views[0], batched[0], atol=1e-4)
    assert not torch.allclose(views[2], batched[2], atol=1e-3)


def test_cancel_between_steps_raises(parts, reference):
    asked = []

    def should_cancel() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(CancelledError, match="cancelled"):
        sample_novel_views(parts, reference, FRONT, RING, steps=5,
                           generator=torch.Generator().manual_seed(0), should_cancel=should_cancel)
    assert len(asked) == 3


# --------------------------------------------------------------------------- SDS

def make_guidance(parts, reference, **overrides) -> Zero123Guidance:
    return Zero123Guidance(GuidanceConfig(**overrides), parts, reference, FRONT)


def test_sds_gradient_is_finite_reproducible_and_depends_on_the_camera(parts, reference):
    guidance = make_guidance(parts, reference)
    assert guidance.background == "white" and guidance.scale == DEFAULT_GUIDANCE_SCALE == 3.0
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    side = Cameras.from_orbit([0.0, 0.0], 0.0, 3.0, 40.0)
    back = Cameras.from_orbit([90.0, 90.0], 20.0, 3.0, 40.0)

    out = guidance.grad(images, side, 0.0, torch.Generator().manual_seed(7))
    again = guidance.grad(images, side, 0.0, torch.Generator().manual_seed(7))
    moved = guidance.grad(images, back, 0.0, torch.Generator().manual_seed(7))

    assert out.grad.shape == images.shape and not out.grad.requires_grad
    assert torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
    assert out.loss > 0 and out.t.shape == (2,) and (0.02 <= out.t).all() and (out.t <= 0.98).all()
    assert torch.equal(out.grad, again.grad)
    assert not torch.allclose(out.grad, moved.grad)


def test_sds_trains_a_render_of_another_size_and_keeps_the_callers_graph(parts, reference):
    guidance = make_guidance(parts, reference, guidance_scale=5.0)
    logits = torch.nn.Parameter(torch.zeros(1, 3, 48, 48))
    images = torch.sigmoid(logits)
    out = guidance.grad(images, Cameras.from_orbit(30.0, 10.0, 3.0, 40.0), 0.5,
                        torch.Generator().manual_seed(3))
    (images * out.grad).sum().backward()
    assert out.grad.shape == (1, 3, 48, 48)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().max() > 0


def test_stable_variant_changes_the_gradient(parts, reference):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    camera = Cameras.from_orbit(0.0, 0.0, 4.0, 40.0)
    plain = make_guidance(parts, reference).grad(images, camera, 0.0, torch.Generator().manual_seed(2))
    stable = make_guidance(parts, reference, zero123_variant="stable_zero123")
    assert stable.variant == "stable_zero123"
    out = stable.grad(images, camera, 0.0, torch.Generator().manual_seed(2))
    assert not torch.allclose(plain.grad, out.grad)
