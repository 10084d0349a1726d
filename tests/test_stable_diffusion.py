"""Stable Diffusion guidance on a tiny random model built offline (see tiny_sd.py).

A random model gives no meaningful images; these tests check what the loop relies on: the
gradient has the render's shape, is finite, non-zero and reproducible, it trains a
parameter, view prompts matter, and every missing-model case says what to do.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig
from dreamsculpt.devices import resolve_device, resolve_dtype
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.guidance.stable_diffusion import (
    DEFAULT_GUIDANCE_SCALE,
    StableDiffusionGuidance,
    load_sd_components,
)

FRONT = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)  # Blender's Front view: camera on -Y
BACK = Cameras.from_orbit(90.0, 0.0, 3.0, 40.0)


@pytest.fixture(scope="module")
def tiny_model(tiny_sd_path) -> str:
    """The session's tiny SD folder (conftest.py); these tests only read it."""
    return tiny_sd_path


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_sd_components(tiny_model, "cpu", torch.float32)


def make_guidance(components, **overrides) -> StableDiffusionGuidance:
    config = GuidanceConfig(prompt="a red cube", negative="blurry", **overrides)
    return StableDiffusionGuidance(config, components=components)


def test_loads_saved_pipeline_and_gives_a_finite_reproducible_gradient(tiny_model):
    parts = load_sd_components(tiny_model)
    assert parts.native_size == 64  # VAE downsamples by 2, UNet sample_size 32
    assert not any(p.requires_grad for p in parts.unet.parameters())
    assert not parts.vae.training
    guidance = make_guidance(parts)
    assert guidance.scale == DEFAULT_GUIDANCE_SCALE == 100.0
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    out = guidance.grad(images, FRONT, 0.0, torch.Generator().manual_seed(7))
    again = guidance.grad(images, FRONT, 0.0, torch.Generator().manual_seed(7))
    other = guidance.grad(images, FRONT, 0.0, torch.Generator().manual_seed(8))

    assert out.grad.shape == images.shape and not out.grad.requires_grad
    assert torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
    assert out.loss > 0 and 0.02 <= float(out.t[0]) <= 0.98
    assert torch.equal(out.grad, again.grad) and out.loss == again.loss
    assert not torch.allclose(out.grad, other.grad)


def test_renders_at_another_size_get_a_gradient_of_their_own_size(components):
    guidance = make_guidance(components, view_dependent=False)
    images = torch.rand(2, 3, 32, 48)
    out = guidance.grad(images, Cameras.from_orbit([0.0, 45.0], 10.0, 3.0, 40.0), 0.5,
                        torch.Generator().manual_seed(0))
    assert out.grad.shape == (2, 3, 32, 48) and out.t.shape == (2,)
    assert torch.isfinite(out.grad).all()


def test_one_sds_step_trains_a_parameter_and_keeps_the_callers_graph(components):
    guidance = make_guidance(components)
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(1, 3, 64, 64))
    optimiser = torch.optim.Adam([logits], lr=1e-2)
    before = logits.detach().clone()

    images = torch.sigmoid(logits)  # a non-leaf render, as the NeRF gives
    out = guidance.grad(images, FRONT, 0.3, torch.Generator().manual_seed(3))
    (images * out.grad).sum().backward()  # the loop's call: the graph must still be there
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().max() > 0
    optimiser.step()

    assert torch.isfinite(logits).all() and not torch.equal(logits.detach(), before)


def test_view_dependent_prompts_make_front_and_back_differ(components):
    guidance = make_guidance(components)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    front = guidance.grad(images, FRONT, 0.0, torch.Generator().manual_seed(5))
    back = guidance.grad(images, BACK, 0.0, torch.Generator().manual_seed(5))
    assert not torch.allclose(front.grad, back.grad)

    plain = make_guidance(components, view_dependent=False)
    front = plain.grad(images, FRONT, 0.0, torch.Generator().manual_seed(5))
    back = plain.grad(images, BACK, 0.0, torch.Generator().manual_seed(5))
    assert torch.allclose(front.grad, back.grad)  # one prompt: the camera does not matter


def assert_says_what_to_do(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "--prior builtin" in message and "--model" in message, message


def test_missing_local_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DreamsculptError) as error:
        load_sd_components(str(missing))
    assert str(missing) in str(error.value)
    assert_says_what_to_do(error)


def test_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    with pytest.raises(DreamsculptError, match="model_index.json") as error:
        load_sd_components(str(tmp_path))
    assert_says_what_to_do(error)


def test_incomplete_diffusers_folder_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(DreamsculptError, match="Could not load the diffusers folder") as error:
        load_sd_components(str(tmp_path))
    assert_says_what_to_do(error)


def test_unreachable_hub_id_gives_one_clear_error():
    started = time.perf_counter()
    with pytest.raises(DreamsculptError) as error:
        load_sd_components("dreamsculpt-tests/no-such-model")
    assert "dreamsculpt-tests/no-such-model" in str(error.value)
    assert "unreachable" in str(error.value)
    assert_says_what_to_do(error)
    assert time.perf_counter() - started < 10  # fails fast, no retries against the network


def test_single_file_without_cached_config_offline_says_what_to_do(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(checkpoint))
    with pytest.raises(DreamsculptError) as error:
        load_sd_components(str(checkpoint))
    assert "unreachable" in str(error.value) and str(checkpoint) in str(error.value)
    assert_says_what_to_do(error)


def test_single_file_inside_a_diffusers_folder_uses_its_configs_offline(tiny_model, tmp_path):
    from safetensors.torch import save_file

    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    checkpoint = folder / "broken.safetensors"  # not Stable Diffusion weights
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(checkpoint))
    with pytest.raises(DreamsculptError, match="as a Stable Diffusion checkpoint") as error:
        load_sd_components(str(checkpoint))
    assert "unreachable" not in str(error.value)  # the configs came from the folder
    assert_says_what_to_do(error)


def test_empty_prompt_is_refused(components):
    with pytest.raises(DreamsculptError, match="prompt"):
        StableDiffusionGuidance(GuidanceConfig(prompt="  "), components=components)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_on_a_cpu_machine_says_to_use_cpu():
    with pytest.raises(DreamsculptError, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(DreamsculptError, match="--device cpu"):
        resolve_device("cuda:1")


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(DreamsculptError, match="--device auto"):
        resolve_device("tpu-please")


def test_fp16_is_cuda_only():
    assert resolve_dtype(False, torch.device("cpu")) == torch.float32
    with pytest.raises(DreamsculptError, match="CUDA-only"):
        resolve_dtype(True, torch.device("cpu"))
    with pytest.raises(DreamsculptError, match="CUDA-only"):
        resolve_dtype(True, "mps")
    assert resolve_dtype(True, "cuda") == torch.float16  # no GPU needed to decide the dtype


def test_sjc_perp_neg_and_dreamtime_each_give_a_finite_gradient_of_their_own(components):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cameras = Cameras.from_orbit(torch.tensor([-90.0, 30.0]), 10.0, 3.0, 40.0)
    grads = {}
    for name, options in {"sds": {}, "sjc": {"score": "sjc"}, "perp_neg": {"perp_neg": True},
                          "dreamtime": {"t_schedule": "dreamtime"}}.items():
        out = make_guidance(components, **options).grad(images, cameras, 0.4, torch.Generator().manual_seed(5))
        assert out.grad.shape == images.shape and torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
        grads[name] = out.grad
    for name in ("sjc", "perp_neg", "dreamtime"):
        assert not torch.allclose(grads[name], grads["sds"]), name
    assert "SJC" in make_guidance(components, score="sjc").describe()
    assert "Perp-Neg" in make_guidance(components, perp_neg=True).describe()


@pytest.mark.parametrize("options", [{"score": "sds"}, {"score": "sjc", "perp_neg": True, "t_schedule": "dreamtime"}],
                         ids=["sds", "sjc-perp-neg-dreamtime"])
def test_one_training_step_with_the_tiny_model_changes_the_field(tiny_model, options):
    from dreamsculpt.optimize import Trainer, TrainingViews
    from dreamsculpt.priors import text_prior
    from test_optimize import tiny_config

    config = tiny_config(steps=4)
    g = config.guidance
    g.prior, g.prompt, g.model, g.device = "sd", "a red cube", tiny_model, "cpu"
    for key, value in options.items():
        setattr(g, key, value)
    prior = text_prior(g, config.render.resolution, TrainingViews.of(config))
    trainer = Trainer(config, prior.guidance, views=prior.views)
    before = trainer.field.planes.detach().clone()
    trainer.train_step()
    grads = [p.grad for group in trainer.optimizer.param_groups for p in group["params"] if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    assert not torch.equal(trainer.field.planes.detach(), before)
