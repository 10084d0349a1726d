"""A predicted depth map aligned to what the scene already knows (Text2Room, SceneScape).

Monocular depth models answer up to an unknown scale and shift in disparity (relative models
by design, metric ones by their error), so each new frame's prediction is mapped onto the
depth the scene mesh renders where it covers the frame: least squares on a scale and a shift
in disparity, once more without the worst residuals (object edges, where the rendered and the
predicted outline disagree by a pixel, would otherwise tilt the fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Fewer known pixels than this and a frame is not aligned (its scale is the model's own).
MIN_KNOWN_PIXELS = 64
#: Residuals beyond this many median absolute deviations are dropped and the fit made again,
#: up to TRIM_ROUNDS times (a wrong patch far off the scene's range pulls the first fit towards
#: itself, so one round does not find all of it).
TRIM_MADS = 3.0
TRIM_ROUNDS = 5


@dataclass
class Alignment:
    """disparity_aligned = scale * disparity + shift; `pixels`: how many pixels the fit used
    (0: nothing was known, scale 1 and shift 0); `residual`: their RMS disparity error, 1/m;
    `fallback`: the fit gave no positive scale and the medians' ratio was used instead."""

    scale: float
    shift: float
    pixels: int
    residual: float
    fallback: bool = False

    def depth(self, disparity: torch.Tensor, far: float = 1e3) -> torch.Tensor:
        """Aligned view depth [H, W] in metres; inf where the aligned disparity is at or past
        1 / far (the sky, or a prediction the fit sends behind the camera)."""
        aligned = self.scale * disparity + self.shift
        return torch.where(aligned > 1.0 / far, 1.0 / aligned.clamp_min(1.0 / far), torch.full_like(aligned, float("inf")))


def align_disparity(disparity: torch.Tensor, depth: torch.Tensor, known: torch.Tensor) -> Alignment:
    """The scale and shift taking a predicted `disparity` [H, W] to 1 / `depth` [H, W] (the
    scene's rendered view depth, metres) over the `known` [H, W] pixels.

    A robust first guess (quartiles), then least squares over the pixels whose residuals are
    within TRIM_MADS median absolute deviations, until nothing more is dropped (at most
    TRIM_ROUNDS times). A scale that comes out non-positive means the prediction does not
    resemble the scene (a flat or inverted map): the frame then keeps the prediction's shape
    at the scene's median distance (`fallback`), rather than a mirrored scene or a dead walk."""
    valid = known & torch.isfinite(depth) & (depth > 0) & torch.isfinite(disparity)
    if int(valid.sum()) < MIN_KNOWN_PIXELS:
        return Alignment(1.0, 0.0, 0, 0.0)
    x, y = disparity[valid].double(), 1.0 / depth[valid].double()
    scale, shift = _robust_start(x, y)
    keep = torch.ones_like(x, dtype=torch.bool)
    for _ in range(TRIM_ROUNDS):
        # Every pixel is judged again by the latest line, so one a rough first line dropped can
        # come back. (The floor, 0.1% of the disparities: data the line fits exactly has no
        # spread to trim by.)
        residual = (scale * x + shift - y).abs()
        limit = max(TRIM_MADS * 1.4826 * float(residual[keep].median()), 1e-3 * float(y.abs().median()))
        inliers = residual <= limit
        if int(inliers.sum()) < MIN_KNOWN_PIXELS:
            break
        settled = torch.equal(inliers, keep)
        keep = inliers
        scale, shift = _fit(x[keep], y[keep])
        if settled:
            break
    x, y = x[keep], y[keep]
    fallback = not scale > 0
    if fallback:                                  # over every known pixel: the trimming trusted the wrong line
        x, y = disparity[valid].double(), 1.0 / depth[valid].double()
        scale, shift = float(y.median() / x.median()) if x.median() > 0 else 0.0, 0.0
        if not scale > 0:
            scale, shift = 0.0, float(y.median())
    rms = float((scale * x + shift - y).square().mean().sqrt())
    return Alignment(float(scale), float(shift), int(len(x)), rms, fallback)


def _robust_start(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(a, b) matching the interquartile ranges and medians of x and y, the sign of a that of
    their rank correlation's: a first guess that a quarter of wild values cannot move (least
    squares follows far-off values wherever they are, and its residuals then hide them)."""
    q = torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype)
    (x1, xm, x3), (y1, ym, y3) = torch.quantile(x, q), torch.quantile(y, q)
    rx, ry = x.argsort().argsort().to(x.dtype), y.argsort().argsort().to(x.dtype)
    sign = 1.0 if float(((rx - rx.mean()) * (ry - ry.mean())).sum()) >= 0 else -1.0
    a = sign * float((y3 - y1) / (x3 - x1)) if x3 > x1 else 0.0
    return a, float(ym - a * xm)


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Least-squares (a, b) of a * x + b = y; a flat prediction (no spread) keeps a = 0 and
    fits the mean."""
    mx, my = x.mean(), y.mean()
    var = (x - mx).square().mean()
    if var <= 1e-18:
        return 0.0, float(my)
    a = ((x - mx) * (y - my)).mean() / var
    return float(a), float(my - a * mx)
