"""MVDream guidance on a tiny random model built offline (see tiny_mvdream.py).

A random model gives no meaningful images; these tests check what MVDream adds to Stable
Diffusion and what the loop relies on: the views of a group see each other (and only each
other), the camera is an input, our cameras become MVDream's as its own code makes them, the
original checkpoint loads to the very weights of the converted folder, the gradient trains the
field, and every bad input says what to do.
"""

from __future__ import annotations

import math
import shutil
import time

import huggingface_hub.constants
import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig, RunConfig
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.guidance.mvdream import (
    DEFAULT_GUIDANCE_SCALE,
    MVDreamGuidance,
    mvdream_cameras,
)
from dreamsculpt.guidance.mvdream_loading import (
    load_mvdream_components,
    save_mvdream_folder,
)
from dreamsculpt.guidance.mvdream_unet import install_multiview_attention
from dreamsculpt.optimize import Trainer, TrainingViews
from tiny_mvdream import (
    TINY_UNET_CONFIG,
    build_tiny_mvdream,
    tiny_unet,
    write_original_checkpoint,
)

#: Two groups of four views 90 degrees apart (MVDream's ring), the second higher up.
RINGS = Cameras.from_orbit(torch.tensor([-90.0, 0.0, 90.0, 180.0] * 2),
                           torch.tensor([15.0] * 4 + [30.0] * 4), 3.0, 40.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return build_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream") / "model")


@pytest.fixture(scope="module")
def components(folder):
    return load_mvdream_components(folder, "cpu", torch.float32)


def unet_inputs(batch: int = 8, seed: int = 0) -> dict:
    """Random UNet inputs for `batch` images at a 16x16 latent (the UNet takes any size)."""
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 4, 16, 16, generator=g),
            "timestep": torch.full((batch,), 500),
            "encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
            "class_labels": mvdream_cameras(RINGS[torch.arange(batch) % 8])}


@torch.no_grad()
def run(unet, inputs: dict) -> torch.Tensor:
    return unet(**inputs).sample


# --- the network ----------------------------------------------------------------------------

def test_self_attention_joins_the_views_of_a_group_and_only_those():
    unet = tiny_unet().eval()
    install_multiview_attention(unet, 4)
    inputs = unet_inputs()
    before = run(unet, inputs)
    inputs["sample"][0] += 1.0                       # view 0 of the first group changes
    after = run(unet, inputs)
    assert not torch.allclose(after[2], before[2], atol=1e-4), "view 2 sees view 0"
    assert torch.allclose(after[4:], before[4:], atol=1e-6), "the other group does not"

    install_multiview_attention(unet, 1)             # control: each view attends to itself
    inputs = unet_inputs()
    before = run(unet, inputs)
    inputs["sample"][0] += 1.0
    after = run(unet, inputs)
    assert not torch.allclose(after[0], before[0], atol=1e-4)
    assert torch.allclose(after[1:], before[1:], atol=1e-6)


def test_a_views_camera_changes_the_output():
    unet = tiny_unet().eval()
    install_multiview_attention(unet, 4)
    inputs = unet_inputs()
    before = run(unet, inputs)
    assert torch.equal(run(unet, inputs), before)    # deterministic, so a change is the camera's
    inputs["class_labels"][1] = mvdream_cameras(Cameras.from_orbit(45.0, -10.0, 3.0, 40.0))[0]
    after = run(unet, inputs)
    assert not torch.allclose(after[1], before[1], atol=1e-4)
    assert torch.allclose(after[4:], before[4:], atol=1e-6)


def test_cameras_become_mvdreams_on_hand_cases():
    # Blender's Front view, camera on -Y: right = +X, up = +Z, back (camera +Z) = -Y, centre at
    # distance 1. MVDream's get_camera(1, elevation=0, azimuth_start=0) gives the same matrix.
    front = mvdream_cameras(Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)).view(4, 4)
    assert torch.allclose(front, torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]]),
                          atol=1e-6)
    # Azimuth 0 (on +X), 30 degrees up: back = centre = (cos 30, 0, sin 30); right = Z x back
    # normalised = (0, 1, 0); up = back x right = (-sin 30, 0, cos 30).
    c, s = math.cos(math.radians(30.0)), 0.5
    expected = torch.tensor([[0.0, -s, c, c], [1, 0, 0, 0], [0, c, s, s], [0, 0, 0, 1]])
    for distance, fov in ((1.5, 20.0), (4.0, 60.0)):   # neither is an input of MVDream's
        raised = mvdream_cameras(Cameras.from_orbit(0.0, 30.0, distance, fov)).view(4, 4)
        assert torch.allclose(raised, expected, atol=1e-6)


# --- loading --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sd-v2.1-base-4view.pt", "mvdream.safetensors"])
def test_original_checkpoint_loads_to_the_folders_weights(name, components, tiny_sd_path, tmp_path):
    checkpoint = write_original_checkpoint(tiny_unet(), tmp_path / name)
    loaded = load_mvdream_components(str(checkpoint), base=tiny_sd_path)
    ours, theirs = loaded.unet.state_dict(), components.unet.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert loaded.native_size == components.native_size == 64 and loaded.views == 4
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    inputs = unet_inputs()
    assert torch.allclose(run(loaded.unet, inputs), run(components.unet, inputs), atol=1e-6, rtol=0)

    converted = load_mvdream_components(str(save_mvdream_folder(loaded, tmp_path / "converted")))
    assert all(torch.equal(v, theirs[k]) for k, v in converted.unet.state_dict().items())
    assert torch.allclose(converted.alphas_cumprod, components.alphas_cumprod)


def assert_says_what_to_do(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "--model" in message and "--prior" in message, message


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(DreamsculptError, match="model_index.json") as error:
        load_mvdream_components(str(tmp_path))
    assert_says_what_to_do(error)


def test_stable_diffusion_folder_is_not_taken_for_mvdream(tiny_sd_path):
    with pytest.raises(DreamsculptError, match="not MVDream") as error:
        load_mvdream_components(tiny_sd_path)
    assert "--prior sd" in str(error.value)


def test_an_mvdream_folder_is_not_taken_for_stable_diffusion(folder):
    from dreamsculpt.guidance.stable_diffusion import load_sd_components

    with pytest.raises(DreamsculptError, match="multi-view \\(MVDream\\) model") as error:
        load_sd_components(folder)
    assert "--prior mvdream" in str(error.value)


def test_checkpoints_with_the_wrong_keys_are_refused(tmp_path, tiny_sd_path):
    path = write_original_checkpoint(tiny_unet(), tmp_path / "full.pt")
    state = torch.load(path, weights_only=True)["state_dict"]
    cases = {
        "no camera": ({k: v for k, v in state.items() if "camera_embed" not in k}, "camera_embed"),
        "unknown": ({**state, "model.diffusion_model.input_blocks.4.1.gate.weight": torch.ones(2)},
                    "input_blocks.4.1.gate.weight"),
        "missing": ({k: v for k, v in state.items() if "output_blocks.1.1.proj_out" not in k},
                    "up_blocks.0.attentions.1.proj_out"),
        "no unet": ({"first_stage_model.encoder.conv_in.weight": torch.ones(1)}, "no MVDream UNet weights"),
    }
    for case, (bad, named) in cases.items():
        torch.save({"state_dict": bad}, tmp_path / f"{case}.ckpt")
        with pytest.raises(DreamsculptError) as error:
            load_mvdream_components(str(tmp_path / f"{case}.ckpt"), base=tiny_sd_path)
        assert named in str(error.value) and "sd-v2.1-base-4view.pt" in str(error.value), (case, error.value)
        assert_says_what_to_do(error)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DreamsculptError, match="Could not read") as error:
        load_mvdream_components(str(tmp_path / "garbage.pt"), base=tiny_sd_path)
    assert_says_what_to_do(error)


def test_checkpoint_for_another_text_encoder_than_the_base_is_refused(tmp_path, tiny_sd_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**TINY_UNET_CONFIG, "cross_attention_dim": 24})   # base gives 32
    path = write_original_checkpoint(unet, tmp_path / "sd-v1.5-4view.pt")
    with pytest.raises(DreamsculptError, match="24-wide text embeddings") as error:
        load_mvdream_components(str(path), base=tiny_sd_path)
    assert_says_what_to_do(error)


def cached_snapshot(cache, repo: str):
    """The snapshot folder of `repo` in a Hugging Face cache, laid out as huggingface_hub lays
    it (refs/main naming a 40-hex commit)."""
    commit = "0123456789abcdef" * 2 + "01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    return root / "snapshots" / commit


def test_hub_ids_load_from_the_cache_offline_in_either_layout(components, folder, tiny_sd_path, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    write_original_checkpoint(tiny_unet(), cached_snapshot(tmp_path, "someone/mvdream") / "sd-v2.1-base-4view.pt")
    shutil.copytree(folder, cached_snapshot(tmp_path, "someone/mvdream-diffusers"), dirs_exist_ok=True)
    expected = components.unet.state_dict()
    for repo in ("someone/mvdream", "someone/mvdream-diffusers"):
        loaded = load_mvdream_components(repo, base=tiny_sd_path)
        assert loaded.source == repo
        assert all(torch.equal(v, expected[k]) for k, v in loaded.unet.state_dict().items()), repo


def test_missing_path_and_unreachable_hub_id_give_one_clear_error(tmp_path):
    with pytest.raises(DreamsculptError, match="does not exist") as error:
        load_mvdream_components(str(tmp_path / "sd-v2.1-base-4view.pt"))
    assert_says_what_to_do(error)
    started = time.perf_counter()
    with pytest.raises(DreamsculptError, match="unreachable") as error:
        load_mvdream_components("dreamsculpt-tests/no-such-mvdream")
    assert "dreamsculpt-tests/no-such-mvdream" in str(error.value)
    assert_says_what_to_do(error)
    assert time.perf_counter() - started < 10


# --- guidance -------------------------------------------------------------------------------

def make_guidance(components, **overrides) -> MVDreamGuidance:
    return MVDreamGuidance(GuidanceConfig(prompt="a red cube", negative="blurry", **overrides),
                           components=components)


def test_grad_is_finite_non_zero_reproducible_and_one_time_per_group(components):
    guidance = make_guidance(components)
    assert guidance.scale == DEFAULT_GUIDANCE_SCALE == 50.0
    assert "MVDream" in guidance.describe() and "4 views" in guidance.describe()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    out = guidance.grad(images, RINGS, 0.0, torch.Generator().manual_seed(7))
    again = guidance.grad(images, RINGS, 0.0, torch.Generator().manual_seed(7))

    assert out.grad.shape == images.shape and not out.grad.requires_grad
    assert torch.isfinite(out.grad).all() and out.grad.abs().max() > 0 and out.loss > 0
    assert torch.equal(out.grad, again.grad)
    assert out.t.shape == (8,) and (out.t[:4] == out.t[0]).all() and (out.t[4:] == out.t[4]).all()
    assert 0.02 <= float(out.t.min()) and float(out.t.max()) <= 0.98


def test_sjc_score_averages_its_draws_over_whole_groups(components):
    guidance = make_guidance(components, score="sjc", t_schedule="dreamtime")
    out = guidance.grad(torch.rand(4, 3, 64, 64), RINGS[:4], 0.5, torch.Generator().manual_seed(3))
    assert out.grad.shape == (4, 3, 64, 64) and torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
    assert "SJC" in guidance.describe() and (out.t == out.t[0]).all()


@pytest.mark.parametrize("score", ["sds", "sjc"])
def test_one_trainer_step_on_a_ring_of_four_changes_the_field(components, score):
    config = RunConfig()
    config.field.grid_resolution = config.render.resolution = 16
    config.render.samples_per_ray = config.render.occupancy_resolution = 16
    config.train.steps, config.train.batch_size, config.camera.ring = 10, 1, 4
    guidance = make_guidance(components, score=score)
    t = Trainer(config, guidance, views=TrainingViews.of(config))
    before = {k: v.detach().clone() for k, v in t.field.state_dict().items()}
    loss = t.train_step()
    assert loss == loss and loss > 0
    after = t.field.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "every field parameter moves"
    assert torch.isfinite(t.field.planes.grad).all() and t.field.planes.grad.abs().max() > 0


def test_bad_batches_and_settings_are_refused(components):
    guidance = make_guidance(components)
    with pytest.raises(DreamsculptError, match="groups of 4") as error:
        guidance.grad(torch.rand(3, 3, 32, 32), RINGS[:3], 0.0, torch.Generator().manual_seed(0))
    assert "ring" in str(error.value)
    with pytest.raises(DreamsculptError, match="cameras"):
        guidance.grad(torch.rand(4, 3, 32, 32), RINGS, 0.0, torch.Generator().manual_seed(0))
    with pytest.raises(DreamsculptError, match="Perp-Neg"):
        make_guidance(components, perp_neg=True)
    with pytest.raises(DreamsculptError, match="prompt"):
        MVDreamGuidance(GuidanceConfig(prompt=" "), components=components)
