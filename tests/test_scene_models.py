"""The scene walk's real-model adapters on tiny random models built offline from configs.

Random weights paint no meaningful pictures; these tests check what a scene walk relies on:
known pixels come back bit for bit, holes are filled with finite colours at the frame's own
size, progress is reported, best-of-N keeps the best seam, depth comes back as inverse depth
at the image's size, and every missing or wrong model says what to do.
"""

from __future__ import annotations

import pytest
import torch
from dreamsculpt.cameras import Pinhole
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.scenes.depth_models import MIN_DEPTH_M, load_depth_model
from dreamsculpt.scenes.inpainting import load_inpainter, seam_error
from tiny_scene_models import build_tiny_depth_anything, build_tiny_inpainting

PROMPT = "a cosy living room"


def camera(width: int, height: int) -> Pinhole:
    """Image models ignore the camera; any valid one will do."""
    return Pinhole(torch.eye(4)[None], torch.tensor([50.0]),
                   torch.tensor([[width / 2, height / 2]]), width, height)


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory) -> str:
    return build_tiny_inpainting(tmp_path_factory.mktemp("tiny-inpaint") / "model")


def frame_with_hole() -> tuple[torch.Tensor, torch.Tensor]:
    """A 45 x 61 frame (not a multiple of the VAE factor 2) with a block hole and a one-pixel
    line of hole; the hole holds NaN, as a renderer's 'nothing here' might."""
    image = torch.rand(3, 45, 61, generator=torch.Generator().manual_seed(0))
    hole = torch.zeros(45, 61, dtype=torch.bool)
    hole[10:30, 20:45] = True
    hole[38, 5:55] = True
    image[:, hole] = float("nan")
    return image, hole


def test_inpainting_fills_the_hole_and_keeps_known_pixels_bit_for_bit(inpainting_model):
    calls = []
    inpainter = load_inpainter(inpainting_model, "cpu", torch.float32, steps=3,
                               on_step=lambda done, total: calls.append((done, total)))
    image, hole = frame_with_hole()

    out = inpainter.inpaint(image, hole, camera(61, 45), PROMPT, torch.Generator().manual_seed(1))

    assert out.shape == (3, 45, 61) and out.dtype == image.dtype
    assert torch.equal(out[:, ~hole], image[:, ~hole])
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert out[:, hole].std() > 0  # painted, not one flat colour
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert inpainter.model == inpainting_model and inpainting_model in inpainter.description
    again = inpainter.inpaint(image, hole, camera(61, 45), PROMPT, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_a_frame_without_holes_comes_back_unchanged(inpainting_model):
    inpainter = load_inpainter(inpainting_model, steps=2)
    image = torch.rand(3, 16, 16)
    out = inpainter.inpaint(image, torch.zeros(16, 16, dtype=torch.bool), camera(16, 16), PROMPT,
                            torch.Generator().manual_seed(0))
    assert torch.equal(out, image)


def test_best_of_two_keeps_the_candidate_with_the_best_seam(inpainting_model):
    calls = []
    inpainter = load_inpainter(inpainting_model, steps=2, candidates=2,
                               on_step=lambda done, total: calls.append((done, total)))
    image, hole = frame_with_hole()

    found = inpainter.make_candidates(image, hole, PROMPT, torch.Generator().manual_seed(5))
    calls.clear()
    out = inpainter.inpaint(image, hole, camera(61, 45), PROMPT, torch.Generator().manual_seed(5))

    assert len(found) == 2 and not torch.equal(found[0], found[1])
    errors = [seam_error(c, image, hole) for c in found]
    best = found[errors.index(min(errors))]
    assert torch.equal(out, torch.where(hole, best, image))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # steps over both candidates
    # The first candidate's seed does not depend on how many candidates follow it.
    single = load_inpainter(inpainting_model, steps=2, candidates=1)
    alone = single.make_candidates(image, hole, PROMPT, torch.Generator().manual_seed(5))
    assert torch.equal(alone[0], found[0])


def test_seam_error_compares_only_the_ring_of_known_pixels_around_the_hole():
    image = torch.zeros(3, 10, 10)
    hole = torch.zeros(10, 10, dtype=torch.bool)
    hole[4:6, 4:6] = True
    ring = torch.zeros(10, 10, dtype=torch.bool)
    ring[3:7, 3:7] = True
    ring &= ~hole  # band 1: the 4 x 4 square around the 2 x 2 hole, 16 - 4 = 12 pixels

    inside_only = torch.where(hole, 1.0, image)       # differs only in the hole
    far_only = image.clone()
    far_only[:, 0, 0] = 0.3                          # differs only far from the hole
    on_ring = torch.where(ring, 0.5, image)           # differs by 0.5 on all 12 ring pixels

    assert seam_error(inside_only, image, hole, band=1) == 0.0
    assert seam_error(far_only, image, hole, band=1) == 0.0
    assert seam_error(on_ring, image, hole, band=1) == pytest.approx(0.5)
    # band 2: 6 x 6 - 4 = 32 ring pixels, 12 of them off by 0.5 -> 12 * 0.5 / 32 = 0.1875
    assert seam_error(on_ring, image, hole, band=2) == pytest.approx(0.1875)
    assert seam_error(image, image, torch.zeros(10, 10, dtype=torch.bool)) == 0.0


def assert_says_what_to_do(error: pytest.ExceptionInfo, flag: str = "--model") -> None:
    message = str(error.value)
    assert "--prior builtin" in message and flag in message, message


def test_a_text_to_image_model_is_refused_as_not_an_inpainting_model(tiny_sd_path):
    with pytest.raises(DreamsculptError, match="not a Stable Diffusion inpainting model") as error:
        load_inpainter(tiny_sd_path)
    assert "4 input channels" in str(error.value)
    assert_says_what_to_do(error)


def test_missing_or_unusable_inpainting_models_say_what_to_do(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamsculptError, match="does not exist") as error:
        load_inpainter(str(missing))
    assert str(missing) in str(error.value)
    assert_says_what_to_do(error)

    with pytest.raises(DreamsculptError, match="model_index.json") as error:
        load_inpainter(str(tmp_path))
    assert_says_what_to_do(error)

    with pytest.raises(DreamsculptError, match="unreachable") as error:
        load_inpainter("dreamsculpt-tests/no-such-inpainting-model")
    assert "dreamsculpt-tests/no-such-inpainting-model" in str(error.value)
    assert_says_what_to_do(error)

    with pytest.raises(DreamsculptError, match="at least one step"):
        load_inpainter(str(missing), steps=0)


@pytest.fixture(scope="module", params=["relative", "metric"])
def depth_model(request, tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp(f"tiny-depth-{request.param}") / "model"
    return request.param, build_tiny_depth_anything(folder, request.param)


def reference_depth(folder: str, image: torch.Tensor) -> torch.Tensor:
    """The folder's model called directly, its prediction resized (bilinear) to [H, W]."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    net = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        pixels = processor(images=image, return_tensors="pt", do_rescale=False)["pixel_values"]
        predicted = net(pixel_values=pixels).predicted_depth  # [1, h, w]
    return torch.nn.functional.interpolate(predicted[:, None], size=image.shape[-2:],
                                           mode="bilinear", align_corners=False)[0, 0]


def test_depth_model_gives_inverse_depth_at_the_image_size(depth_model):
    kind, folder = depth_model
    estimator = load_depth_model(folder, "cpu")
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))

    disparity = estimator.disparity(image, camera(56, 40))

    assert disparity.shape == (40, 56) and torch.isfinite(disparity).all()
    assert estimator.model == folder and folder in estimator.description
    depth = reference_depth(folder, image)
    assert depth.std() > 0  # a depth map with structure, so the comparison means something
    if kind == "metric":  # metres in, 1 / metres out
        assert estimator.kind == "metric"
        torch.testing.assert_close(disparity, 1.0 / depth.clamp_min(MIN_DEPTH_M))
    else:                 # already an affine-invariant disparity: returned as it is
        assert estimator.kind == "disparity"
        torch.testing.assert_close(disparity, depth)


def test_missing_or_unusable_depth_models_say_what_to_do(tmp_path):
    weights = tmp_path / "depth.safetensors"
    weights.write_bytes(b"not really weights")
    with pytest.raises(DreamsculptError, match="single file") as error:
        load_depth_model(str(weights))
    assert_says_what_to_do(error, "--depth-model")

    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamsculptError, match="does not exist") as error:
        load_depth_model(str(missing))
    assert_says_what_to_do(error, "--depth-model")

    with pytest.raises(DreamsculptError, match="config.json") as error:
        load_depth_model(str(tmp_path))
    assert_says_what_to_do(error, "--depth-model")

    with pytest.raises(DreamsculptError, match="unreachable") as error:
        load_depth_model("dreamsculpt-tests/no-such-depth-model")
    assert_says_what_to_do(error, "--depth-model")
