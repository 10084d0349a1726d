"""The reference prior is the exact denoiser of a finite image set: checked at its two limits
(tiny noise -> the nearest image, huge noise -> the (view-weighted) mean), its classifier-free
guidance emulation, and its SDS gradient pulling a render towards the set."""

from __future__ import annotations

import math

import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig
from dreamsculpt.guidance.closed_form import ClosedFormPrior
from dreamsculpt.image_sets import ImageSet

SIZE, N = 8, 4


def random_set(posed: bool = False, seed: int = 0) -> ImageSet:
    """N random SIZE x SIZE images in [0, 1]; posed: azimuths 0, 90, 180, 270 at elevation 0."""
    images = torch.rand(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    if not posed:
        return ImageSet(images, ["a"] * N)
    return ImageSet(images, ["a"] * N, torch.tensor([0.0, 90.0, 180.0, 270.0]), torch.zeros(N),
                    torch.full((N,), 3.0), torch.full((N,), 40.0))


def prior(images: ImageSet, condition=None, **config) -> ClosedFormPrior:
    condition = torch.ones(len(images), dtype=torch.bool) if condition is None else condition
    return ClosedFormPrior(images, condition, GuidanceConfig(prior="references", **config))


def noised(x0: torch.Tensor, alpha_bar: float, seed: int = 1) -> torch.Tensor:
    """x_t = sqrt(a) x0 + sqrt(1 - a) eps for flat images x0 [B, D] in [-1, 1]."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * eps


def test_tiny_noise_gives_the_nearest_reference():
    p = prior(random_set())
    a = 1.0 - 1e-4
    for k in range(N):
        x_t = noised(p.flat[k:k + 1], a)
        # Logit gaps are |x_i - x_k|^2 / (2 (1 - a)) ~ 60 / 2e-4: one image takes all the weight.
        x0 = p.denoise(x_t, torch.tensor([a]), torch.zeros(1, N))
        assert torch.allclose(x0, p.flat[k:k + 1], atol=1e-5), k


def test_huge_noise_gives_the_set_mean():
    p = prior(random_set())
    a = 1e-12
    x_t = noised(p.flat[:2], a)  # pure noise, for all practical purposes
    # Logits -|x_t - sqrt(a) x_i|^2 / 2 differ by about sqrt(a) x_t . x_i ~ 1e-6 * 100: uniform.
    x0 = p.denoise(x_t, torch.full((2,), a), torch.zeros(2, N))
    assert torch.allclose(x0, p.flat.mean(0).expand(2, -1), atol=1e-4)


def test_subset_restricts_the_estimate():
    p = prior(random_set())
    subset = torch.tensor([False, True, False, True])
    x0 = p.denoise(noised(p.flat[:1], 1e-12), torch.tensor([1e-12]), torch.zeros(1, N), subset)
    assert torch.allclose(x0[0], (p.flat[1] + p.flat[3]) / 2, atol=1e-4)
    # At tiny noise on image 0, which the subset excludes, the nearest allowed image wins.
    nearest = 1 if (p.flat[0] - p.flat[1]).norm() < (p.flat[0] - p.flat[3]).norm() else 3
    x0 = p.denoise(p.flat[:1], torch.tensor([1.0 - 1e-4]), torch.zeros(1, N), subset)
    assert torch.allclose(x0[0], p.flat[nearest], atol=1e-5)


def test_poses_weight_the_mean_by_the_view_kernel():
    images = random_set(posed=True)
    camera = Cameras.from_orbit(60.0, 0.0, 3.0, 40.0)
    a = torch.tensor([1e-12])
    x_t = noised(torch.zeros(1, 3 * SIZE * SIZE), 1e-12)

    wide = prior(images, view_sigma_deg=40.0)
    log_k = wide.log_view_kernel(camera)
    # Angles from azimuth 60 to 0, 90, 180, 270 are 60, 30, 120, 150 degrees; sigma 40:
    # log k = -0.5 (angle / 40)^2 = -1.125, -0.28125 for the two within nearest + sigma
    # (30 + 40 = 70 degrees); the views at 120 and 150 degrees are cut off (-inf).
    assert log_k[0, :2].tolist() == pytest.approx([-1.125, -0.28125], abs=1e-4)
    assert torch.isinf(log_k[0, 2:]).all() and (log_k[0, 2:] < 0).all()
    expected = torch.softmax(log_k, -1) @ wide.flat
    assert torch.allclose(wide.denoise(x_t, a, log_k), expected, atol=1e-4)

    # A narrow kernel (sigma 5): 30 degrees off is exp(-18) above 60 degrees off (exp(-72)),
    # so the nearest reference (azimuth 90) is the estimate even at huge noise.
    narrow = prior(images, view_sigma_deg=5.0)
    x0 = narrow.denoise(x_t, a, narrow.log_view_kernel(camera))
    assert torch.allclose(x0[0], narrow.flat[1], atol=1e-5)


def test_no_poses_means_no_view_kernel():
    p = prior(random_set(), view_sigma_deg=5.0)
    assert torch.equal(p.log_view_kernel(Cameras.from_orbit([0.0, 77.0], 10.0, 3.0, 40.0)), torch.zeros(2, N))


def sds(p: ClosedFormPrior, images: torch.Tensor, seed: int = 3, progress: float = 0.0):
    cams = Cameras.from_orbit(torch.zeros(len(images)), 0.0, 3.0, 40.0)
    return p.grad(images, cams, progress, torch.Generator().manual_seed(seed))


def test_guidance_scale_one_is_the_conditional_estimate():
    images = random_set()
    condition = torch.tensor([True, False, True, False])
    render = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    guided = sds(prior(images, condition, guidance_scale=1.0), render)
    # The conditional model alone: the prior of the condition's images only (where the
    # conditional and unconditional sets are the same, any scale is a no-op).
    alone = sds(prior(images.select(condition), guidance_scale=7.0), render)
    assert torch.allclose(guided.grad, alone.grad, atol=1e-6)
    assert torch.equal(guided.t, alone.t)


def test_guidance_scale_extrapolates_linearly():
    # x0 = x0_u + s (x0_c - x0_u) and the gradient is affine in x0, so
    # grad(s) = (1 - s) grad(0) + s grad(1); s = 3: -2 grad(0) + 3 grad(1). High noise only
    # (t >= 0.9), where the conditional and unconditional estimates (the two sets' means) differ.
    images, condition = random_set(), torch.tensor([True, True, False, False])
    render = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    g = {s: sds(prior(images, condition, guidance_scale=s, t_min=0.9), render).grad for s in (0.0, 1.0, 3.0)}
    assert torch.allclose(g[3.0], -2.0 * g[0.0] + 3.0 * g[1.0], atol=1e-5)
    assert not torch.allclose(g[3.0], g[1.0])
    assert prior(images, condition).scale == 1.5  # the default when none is given


def test_grad_shape_and_finiteness_at_any_render_size():
    p = prior(random_set())
    for size in (SIZE, 16, 5):
        out = sds(p, torch.rand(3, 3, size, size))
        assert out.grad.shape == (3, 3, size, size) and not out.grad.requires_grad
        assert torch.isfinite(out.grad).all() and out.grad.abs().max() > 0
        assert out.t.shape == (3,) and ((out.t >= 0.02) & (out.t <= 0.98)).all()
        assert out.loss > 0


def test_same_generator_seed_same_gradient():
    p, render = prior(random_set()), torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(sds(p, render, seed=5).grad, sds(p, render, seed=5).grad)
    assert not torch.equal(sds(p, render, seed=5).grad, sds(p, render, seed=6).grad)


def test_gradient_descent_pulls_a_render_towards_the_set():
    images = random_set()
    p = prior(images, t_max=0.5)
    # Start between reference 2 and an unrelated image.
    other = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    render = 0.5 * images.images[2:3] + 0.5 * other

    def nearest(x):
        d = (x.reshape(1, -1) - images.images.reshape(N, -1)).norm(dim=-1)
        return d.min().item(), int(d.argmin())

    start, k = nearest(render)
    assert k == 2
    # One step: g = 2 sqrt(a) sqrt(1 - a) (x - x0_hat) points away from the denoised image.
    stepped = render - 0.5 * sds(p, render).grad
    assert nearest(stepped)[0] < start
    # And many steps converge onto the reference.
    x = render.clone()
    for step in range(200):
        x = (x - 0.5 * sds(p, x, seed=step).grad).clamp(0, 1)
    end, k = nearest(x)
    assert k == 2 and end < 0.1 * start
