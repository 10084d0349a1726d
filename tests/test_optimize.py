"""The optimisation loop on tiny settings: reproducible, resumable, cancellable, loud about
NaNs, reporting progress; and one real step through Stable Diffusion loaded the way
`--model PATH` loads it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from dreamsculpt.config import RunConfig
from dreamsculpt.errors import CancelledError, DreamsculptError, NonFiniteError
from dreamsculpt.guidance.base import GuidanceOutput
from dreamsculpt.guidance.closed_form import ClosedFormPrior
from dreamsculpt.image_sets import ImageSet
from dreamsculpt.optimize import Callbacks, Progress, Trainer, TrainingViews
from dreamsculpt.priors import text_prior

STEPS = 6


def tiny_config(steps: int = STEPS, seed: int = 0) -> RunConfig:
    """Resolution 16, a 16^2 triplane, 16 samples per ray. Warm-up ends after 2 steps, so
    shaded (lambertian / textureless) steps with normals are exercised too."""
    config = RunConfig()
    config.field.grid_resolution = 16
    config.render.resolution = 16
    config.render.samples_per_ray = 16
    config.render.occupancy_resolution = 16
    config.render.occupancy_update_every = 2
    config.shading.warmup_fraction = 2 / steps
    config.train.steps, config.train.seed = steps, seed
    config.train.checkpoint_every = 0
    config.guidance.prior = "references"
    return config


def tiny_prior(config: RunConfig) -> ClosedFormPrior:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return ClosedFormPrior(ImageSet(images, ["a"] * 4), torch.ones(4, dtype=torch.bool), config.guidance)


def trainer(config: RunConfig | None = None, callbacks: Callbacks | None = None,
            checkpoint: Path | None = None) -> Trainer:
    config = config or tiny_config()
    return Trainer(config, tiny_prior(config), callbacks, checkpoint)


def parameters(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.field.state_dict().items()}


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max():.3g}"


def test_same_seed_same_field():
    first = trainer()
    first.run()
    torch.rand(1000)  # whatever else the process did in between
    second = trainer()
    second.run()
    assert_same_parameters(parameters(first), parameters(second))
    assert first.step_index == second.step_index == STEPS


def test_two_trainers_in_one_process_do_not_share_randomness():
    # Every random draw comes from the run's own generator, never from torch's global RNG, so
    # runs side by side (the job server) and resumed runs repeat exactly.
    first, second = trainer(), trainer()
    first.run()
    second.run()
    assert_same_parameters(parameters(first), parameters(second))


def test_another_seed_another_field():
    first, other = trainer(), trainer(tiny_config(seed=1))
    first.run()
    other.run()
    assert not torch.equal(first.field.planes, other.field.planes)


def test_training_changes_the_field():
    t = trainer()
    before = parameters(t)
    t.run()
    after = parameters(t)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


def cancel_after(steps: int) -> Callbacks:
    """Asks to stop once `steps` steps are done (the loop asks before every step)."""
    asked = iter(range(1 << 30))
    return Callbacks(should_cancel=lambda: next(asked) >= steps)


def test_cancel_raises_and_writes_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    t = trainer(callbacks=cancel_after(3), checkpoint=checkpoint)
    with pytest.raises(CancelledError, match="--resume"):
        t.run()
    assert t.step_index == 3 and checkpoint.exists()
    state = torch.load(checkpoint, weights_only=False)
    assert state["step"] == 3
    assert_same_parameters(state["field"], parameters(t))


def test_resume_gives_the_same_field_as_an_uninterrupted_run(tmp_path):
    uninterrupted = trainer()
    uninterrupted.run()

    checkpoint = tmp_path / "checkpoint.pt"
    interrupted = trainer(callbacks=cancel_after(3), checkpoint=checkpoint)
    with pytest.raises(CancelledError):
        interrupted.run()
    del interrupted
    torch.rand(1000)  # whatever else the process did in between (a new process starts afresh)

    resumed = trainer(checkpoint=checkpoint)
    resumed.load_checkpoint(checkpoint)
    assert resumed.step_index == 3
    resumed.run()
    assert resumed.step_index == STEPS
    assert_same_parameters(parameters(uninterrupted), parameters(resumed))


def test_resume_keeps_optimiser_and_occupancy_state(tmp_path):
    # What the checkpoint carries besides the field.
    checkpoint = tmp_path / "checkpoint.pt"
    t = trainer(callbacks=cancel_after(3), checkpoint=checkpoint)
    with pytest.raises(CancelledError):
        t.run()
    resumed = trainer(checkpoint=checkpoint)
    resumed.load_checkpoint(checkpoint)
    assert torch.equal(resumed.occupancy.occupied, t.occupancy.occupied)
    assert torch.equal(resumed.generator.get_state(), t.generator.get_state())
    saved, loaded = t.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)


def test_checkpoint_of_other_field_settings_is_refused(tmp_path):
    t = trainer(checkpoint=tmp_path / "checkpoint.pt")
    t.save_checkpoint()
    other = tiny_config()
    other.field.grid_resolution = 32
    with pytest.raises(DreamsculptError, match="different field settings"):
        trainer(other).load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DreamsculptError, match="without --resume"):
        trainer().load_checkpoint(tmp_path / "garbage.pt")


class NaNGuidance:
    background = "white"
    device = torch.device("cpu")

    def grad(self, images, cameras, progress, generator, backgrounds=None):
        return GuidanceOutput(torch.full_like(images, float("nan")), float("nan"), torch.zeros(len(images)))


def test_nan_guidance_stops_with_a_clear_error():
    t = Trainer(tiny_config(), NaNGuidance())
    with pytest.raises(NonFiniteError) as error:
        t.run()
    message = str(error.value)
    assert "NaN" in message and "step 0" in message
    assert "--guidance-scale" in message or "learning rate" in message  # says what to try
    assert t.step_index == 0


def test_slow_previews_are_spaced_to_their_time_budget():
    """A preview far costlier than a step is not rendered at every due step; the last one is."""
    config = tiny_config(steps=30)
    config.train.preview_every, config.train.preview_size, config.train.preview_budget = 1, 160, 0.05
    steps_seen = []

    def slow_preview(step, image):
        steps_seen.append(step)
        time.sleep(0.05)   # on top of the render: a preview worth many 16 px steps

    trainer(config, Callbacks(on_preview=slow_preview)).run()
    assert steps_seen[-1] == 30 and steps_seen[0] == 1
    assert len(steps_seen) < 10


def test_progress_reports_step_total_and_eta():
    reports: list[Progress] = []
    previews: list[tuple[int, torch.Tensor]] = []
    config = tiny_config()
    config.train.preview_every, config.train.preview_size = 3, 24
    config.train.preview_budget = 1.0   # every due preview, however slow
    t = trainer(config, Callbacks(on_progress=reports.append, on_preview=lambda s, im: previews.append((s, im))))
    t.run()
    assert [p.step for p in reports] == list(range(1, STEPS + 1))
    assert all(p.total == STEPS and p.stage == "optimising" for p in reports)
    assert all(p.eta_s >= 0 for p in reports) and reports[-1].eta_s == 0
    assert reports[0].eta_s > 0
    elapsed = [p.elapsed_s for p in reports]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert all(p.loss == p.loss and p.loss >= 0 for p in reports)  # not NaN
    assert [s for s, _ in previews] == [3, 6]
    assert all(im.shape == (3, 24, 24) and 0 <= im.min() and im.max() <= 1 for _, im in previews)


# --- Stable Diffusion, loaded as --model PATH loads it -----------------------------------------

def test_one_sd_step_trains_the_field(tiny_sd_path):
    config = tiny_config(steps=10)
    config.render.resolution = 32
    g = config.guidance
    g.prior, g.model, g.prompt = "sd", tiny_sd_path, "a chair"
    prior = text_prior(g, config.render.resolution, TrainingViews.of(config))
    assert prior.description == f"sd: {tiny_sd_path}" and prior.model == tiny_sd_path
    assert prior.guidance.background == "learned"

    t = Trainer(config, prior.guidance, views=prior.views)
    before = parameters(t)
    loss = t.train_step()
    assert loss == loss and loss > 0
    after = parameters(t)
    assert all(not torch.equal(before[k], after[k]) for k in before), "every field parameter moves"
    grads = [p.grad for group in t.optimizer.param_groups for p in group["params"]]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert t.field.planes.grad.abs().max() > 0
