"""The model-independent rules of guidance against values worked out by hand: Perp-Neg's
perpendicular negatives, the view prompts' layout and weights, the time schedules (random,
anneal, DreamTime), the two scores (SDS, SJC), and the camera rings of multi-view priors."""

from __future__ import annotations

import pytest
import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import CameraConfig, GuidanceConfig
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.guidance.base import (
    DreamTimeSchedule,
    make_schedule,
    scaled_linear_alphas_cumprod,
)
from dreamsculpt.guidance.prompts import ViewPrompts, perp_neg_guidance, perpendicular
from dreamsculpt.guidance.scores import SJC_SAMPLES, score_gradient, score_of
from dreamsculpt.optimize import sample_cameras


def test_perpendicular_removes_the_part_along_the_positive_direction():
    # d = (1, 1) onto (2, 0): projection (<d,o>/<o,o>) o = (2/4) (2, 0) = (1, 0); the rest (0, 1).
    d, onto = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    assert torch.allclose(perpendicular(d, onto), torch.tensor([[0.0, 1.0]]))
    # Per image: the second image's onto is zero (no text effect), so d comes back whole.
    d2, onto2 = torch.tensor([[1.0, 1.0], [3.0, -1.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(perpendicular(d2, onto2), torch.tensor([[0.0, 1.0], [3.0, -1.0]]))


def test_perp_neg_guidance_by_hand():
    # e_u = (1, 1), e_p = (3, 1) -> d_p = (2, 0). Negatives (2, 2) and (4, 1): d_1 = (1, 1) with
    # perp (0, 1); d_2 = (3, 0), all along d_p, perp (0, 0). Weights 0.5 and 2, scale 10:
    # eps = e_u + 10 ((2, 0) - 0.5 (0, 1) - 2 (0, 0)) = (1, 1) + (20, -5) = (21, -4).
    e_u, e_p = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]])
    negatives = torch.tensor([[[2.0, 2.0]], [[4.0, 1.0]]])   # [N=2, B=1, 2]
    eps = perp_neg_guidance(e_u, e_p, negatives, torch.tensor([[0.5, 2.0]]), 10.0)
    assert torch.allclose(eps, torch.tensor([[21.0, -4.0]]))


TEXTS = ["cat, front view", "cat, side view", "cat, back view", "cat, overhead view", "blurry"]


def one_hot(texts: list[str]) -> torch.Tensor:
    """A stand-in text encoder: text k of TEXTS -> [L=1, D=5] one-hot row k."""
    return torch.eye(len(TEXTS))[[TEXTS.index(t) for t in texts]][:, None, :]


def test_view_prompts_layout_and_perp_neg_weights():
    prompts = ViewPrompts(one_hot, "cat", "blurry", view_dependent=True, perp_neg=True)
    # Blender's front camera (azimuth -90), one between front and side (-45), the back (+90).
    cameras = Cameras.from_orbit(torch.tensor([-90.0, -45.0, 90.0]), 0.0, 3.0, 40.0)
    assert prompts.count == 5
    emb = prompts.embeddings(cameras)[:, 0]   # [5 * 3, 5]
    assert torch.equal(emb[0:3].argmax(1), torch.tensor([4, 4, 4]))          # unconditional: "blurry"
    # Positive: front; half front half side (45 of 90 degrees away); back.
    assert torch.allclose(emb[3:6], torch.tensor([[1, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 1, 0, 0.0]]))
    assert torch.equal(emb[6:9].argmax(1), torch.tensor([0, 0, 0]))           # negatives: front ...
    assert torch.equal(emb[9:12].argmax(1), torch.tensor([1, 1, 1]))          # ... side ...
    assert torch.equal(emb[12:15].argmax(1), torch.tensor([2, 2, 2]))         # ... back
    # w_i = 1 - ring weight of view i: a view's own prompt is never its negative.
    assert torch.allclose(prompts.negative_weights(cameras),
                          torch.tensor([[0.0, 1.0, 1.0], [0.5, 0.5, 1.0], [1.0, 1.0, 0.0]]))


def test_view_prompts_guide_is_cfg_or_perp_neg():
    cameras = Cameras.from_orbit(90.0, 0.0, 3.0, 40.0)   # the back: negative weights (1, 1, 0)
    plain = ViewPrompts(one_hot, "cat", "blurry", view_dependent=True, perp_neg=False)
    e_u, e_p = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]])
    assert plain.count == 2
    assert torch.allclose(plain.guide(torch.cat([e_u, e_p]), cameras, 7.5), e_u + 7.5 * (e_p - e_u))
    perp = ViewPrompts(one_hot, "cat", "blurry", view_dependent=True, perp_neg=True)
    front, side, back = torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 3.0]]), torch.tensor([[9.0, 9.0]])
    # d_p = (2, 0); perp(front - e_u = (1, 1)) = (0, 1); perp(side - e_u = (0, 2)) = (0, 2); back's weight 0.
    # eps = (1, 1) + 10 ((2, 0) - (0, 1) - (0, 2)) = (21, -29).
    eps = perp.guide(torch.cat([e_u, e_p, front, side, back]), cameras, 10.0)
    assert torch.allclose(eps, torch.tensor([[21.0, -29.0]]))


def test_perp_neg_without_view_prompts_is_refused():
    with pytest.raises(DreamsculptError, match="view-dependent prompts"):
        ViewPrompts(one_hot, "cat", "blurry", view_dependent=False, perp_neg=True)


def test_dreamtime_by_hand():
    # T = 5, abar = (0.9, 0.8, 0.5, 0.2, 0.1): sqrt((1 - a) / a) = (1/3, 1/2, 1, 2, 3).
    # Prior exp(-(s - 2.5)^2 / (2 * 0.625^2)), 2 * 0.625^2 = 0.78125: s = 0..4 ->
    # (e^-8, e^-2.88, e^-0.32, e^-0.32, e^-2.88) = (0.000335, 0.0561, 0.7261, 0.7261, 0.0561).
    # Products (0.000112, 0.02806, 0.7261, 1.4523, 0.1684), sum 2.3750, normalised
    # (0.00005, 0.0118, 0.3057, 0.6115, 0.0709). Weight above each step:
    # s=4: 0; s=3: 0.0709; s=2: 0.6824; s=1: 0.9882; s=0: 0.99995.
    # The step at p is the smallest s whose weight above is <= p.
    schedule = DreamTimeSchedule(torch.tensor([0.9, 0.8, 0.5, 0.2, 0.1]), t_min=0.0, t_max=1.0)
    progress = [0.0, 0.05, 0.1, 0.68, 0.69, 0.98, 0.99, 1.0]
    assert [schedule.step(p) for p in progress] == [4, 4, 3, 3, 2, 2, 1, 0]
    assert torch.equal(schedule.sample(3, 0.1, torch.Generator()), torch.full((3,), 3 / 4))


def test_dreamtime_falls_monotonically_inside_the_range():
    config = GuidanceConfig(t_schedule="dreamtime", t_min=0.02, t_max=0.98)
    schedule = make_schedule(config, scaled_linear_alphas_cumprod())
    steps = [schedule.step(i / 200) for i in range(201)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert steps[0] == round(0.98 * 999) and steps[-1] == round(0.02 * 999)
    # Most of the run is spent in the middle of the schedule, where the prior puts its weight.
    assert 300 <= steps[100] <= 700


def test_anneal_and_random_ranges():
    generator = torch.Generator().manual_seed(0)
    anneal = make_schedule(GuidanceConfig(t_schedule="anneal"))
    # The ceiling falls linearly from t_max 0.98 to 0.5: at half way (0.98 + 0.5) / 2 = 0.74.
    assert [anneal.upper(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.98, 0.74, 0.5])
    late = anneal.sample(1000, 1.0, generator)
    assert late.min() >= 0.02 and late.max() <= 0.5
    assert make_schedule(GuidanceConfig(t_schedule="anneal", t_anneal_to=0.3)).upper(1.0) == pytest.approx(0.3)
    uniform = make_schedule(GuidanceConfig(t_schedule="random")).sample(1000, 1.0, generator)
    assert uniform.max() > 0.9 and uniform.min() >= 0.02


def test_sds_and_sjc_scores_by_hand():
    """The prediction is a constant c: SDS gives (1 - abar)(c - n), SJC the mean of (c - n_k)
    over its draws, which come draw-major from the generator."""
    latents = torch.tensor([[[[0.5]]], [[[-1.0]]]])            # [B=2, 1, 1, 1]
    steps = torch.tensor([100, 700])
    alphas = scaled_linear_alphas_cumprod()
    seen = {}

    def predict(noisy, at):
        seen["noisy"], seen["steps"] = noisy, at
        return torch.full_like(noisy, 0.25)

    ab = alphas[steps].view(2, 1, 1, 1)
    sds = score_gradient(score_of(GuidanceConfig(score="sds")), latents, steps, alphas, predict,
                         torch.Generator().manual_seed(3))
    n = torch.randn((2, 1, 1, 1), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(seen["noisy"], ab.sqrt() * latents + (1 - ab).sqrt() * n)
    assert torch.allclose(sds, (1 - ab) * (0.25 - n))

    sjc = score_of(GuidanceConfig(score="sjc"))
    assert sjc.samples == SJC_SAMPLES == 2
    g = score_gradient(sjc, latents, steps, alphas, predict, torch.Generator().manual_seed(3))
    n = torch.randn((4, 1, 1, 1), generator=torch.Generator().manual_seed(3))   # [draw 0: B][draw 1: B]
    assert torch.equal(seen["steps"], torch.tensor([100, 700, 100, 700]))
    assert torch.allclose(g, 0.25 - (n[:2] + n[2:]) / 2)


def test_a_ring_of_cameras_shares_all_but_the_azimuth():
    cameras = sample_cameras(CameraConfig(ring=4), 3, torch.Generator().manual_seed(0))
    assert len(cameras) == 12
    azimuth = cameras.azimuth_deg.view(3, 4)
    turns = torch.remainder(azimuth - azimuth[:, :1], 360.0)
    assert torch.allclose(turns, torch.tensor([0.0, 90.0, 180.0, 270.0]).expand(3, 4))
    for values in (cameras.elevation_deg, cameras.distance, cameras.fov_deg):
        assert torch.equal(values.view(3, 4), values.view(3, 4)[:, :1].expand(3, 4))
    # Without a ring the draws are what they always were.
    one = sample_cameras(CameraConfig(), 3, torch.Generator().manual_seed(0))
    assert torch.allclose(one.azimuth_deg, azimuth[:, 0])


@pytest.mark.parametrize("score,schedule", [("sjc", "random"), ("sds", "dreamtime"), ("sjc", "anneal")])
def test_the_closed_form_prior_trains_with_each_score_and_schedule(score, schedule):
    from dreamsculpt.optimize import Trainer
    from test_optimize import tiny_config, tiny_prior

    config = tiny_config()
    config.guidance.score, config.guidance.t_schedule = score, schedule
    trainer = Trainer(config, tiny_prior(config))
    before = trainer.field.planes.detach().clone()
    losses = [trainer.train_step() for _ in range(3)]
    assert all(loss == loss and loss > 0 for loss in losses)
    assert torch.isfinite(trainer.field.planes.grad).all()
    assert not torch.equal(trainer.field.planes.detach(), before)
