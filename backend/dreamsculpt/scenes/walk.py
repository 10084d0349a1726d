"""One frame of a scene walk, top to bottom (SceneScape / Text2Room), and the walk's state.

    render the scene from the frame's camera -> holes (tiny ones filled from their neighbours)
    -> inpaint the large holes -> predict depth, align it to the rendered depth where the scene
    is known -> unproject the new pixels into triangles stitched to the known ones -> the scene
    grows (decimated past its face budget)

The state (the scene mesh and how many frames are done) is the walk's checkpoint; the frames
themselves are on disk by then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cameras import Pinhole
from .alignment import Alignment, align_disparity
from .models import DepthEstimator, Inpainter
from .scene_mesh import (
    TriangleSoup,
    bounded,
    dilated,
    find_holes,
    frame_triangles,
    render_mesh,
)

#: Known pixels this close (pixels) to a hole are not used to align depth: the render's outline
#: and the prediction's disagree by a pixel or two there.
ALIGN_MARGIN = 2


@dataclass
class WalkSettings:
    prompt: str
    max_small_hole: int = 24          # holes of at most this many pixels are filled classically
    inpaint_dilation: int = 2         # the inpainter repaints this many pixels around each hole too
    max_faces: int = 2_000_000        # past this the scene is decimated to half
    min_view_cos: float = 0.1         # triangles seen more grazing than this are dropped


@dataclass
class FrameResult:
    """What one frame made. rgb: [3, H, W]; depth: [H, W] view depth (metres, inf: none);
    new_pixels: how many pixels it added; alignment: the depth fit (None for a frame that
    needed no depth)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    new_pixels: int
    new_faces: int
    alignment: Alignment | None


@dataclass
class WalkState:
    scene: TriangleSoup = field(default_factory=TriangleSoup.empty)
    frames_done: int = 0
    records: list[dict] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Atomically (a kill mid-write leaves the previous checkpoint)."""
        part = path.with_suffix(".part")
        torch.save({"vertices": self.scene.vertices, "faces": self.scene.faces, "colours": self.scene.colours,
                    "frames_done": self.frames_done, "records": self.records}, part)
        part.replace(path)

    @staticmethod
    def load(path: Path) -> "WalkState":
        data = torch.load(path, weights_only=True)
        scene = TriangleSoup(data["vertices"], data["faces"], data["colours"])
        return WalkState(scene, int(data["frames_done"]), list(data["records"]))


def start_frame(state: WalkState, camera: Pinhole, rgb: torch.Tensor | None, depth: torch.Tensor | None,
                inpainter: Inpainter, depth_model: DepthEstimator, settings: WalkSettings,
                generator: torch.Generator) -> FrameResult:
    """The first frame: the start image `rgb` [3, H, W], or (None) the inpainter's answer to an
    empty frame (made from the prompt); its `depth` [H, W] when known (a render's depth pass,
    which also fixes the scene's scale), else the depth model's as it comes (nothing to align
    it to yet)."""
    H, W = camera.height, camera.width
    if rgb is None:
        rgb = inpainter.inpaint(torch.zeros(3, H, W), torch.ones(H, W, dtype=torch.bool), camera,
                                settings.prompt, generator)
    alignment = None
    if depth is None:
        alignment = Alignment(1.0, 0.0, 0, 0.0)
        depth = alignment.depth(depth_model.disparity(rgb, camera))
    return _add(state, camera, rgb, depth, torch.isfinite(depth), alignment, settings)


def next_frame(state: WalkState, camera: Pinhole, inpainter: Inpainter, depth_model: DepthEstimator,
               settings: WalkSettings, generator: torch.Generator,
               on_stage=lambda stage: None) -> FrameResult:
    """Extend the scene by what `camera` sees that it does not hold yet."""
    render = render_mesh(state.scene, camera)
    holes = find_holes(render, settings.max_small_hole)
    rgb, depth = holes.rgb, holes.depth.clone()
    alignment = None
    if bool(holes.large.any()):
        on_stage("inpainting")
        repaint = dilated(holes.large, settings.inpaint_dilation) & ~holes.small
        made = inpainter.inpaint(rgb, repaint, camera, settings.prompt, generator)
        rgb = torch.where(holes.large[None], made, rgb)          # known pixels stay the scene's own
        on_stage("depth")
        disparity = depth_model.disparity(made, camera)
        known = ~dilated(holes.large | holes.small, ALIGN_MARGIN)
        alignment = align_disparity(disparity, render.depth[0], known)
        depth[holes.large] = alignment.depth(disparity)[holes.large]
    on_stage("fusing")
    return _add(state, camera, rgb, depth, holes.large | holes.small, alignment, settings)


def _add(state: WalkState, camera: Pinhole, rgb: torch.Tensor, depth: torch.Tensor, new: torch.Tensor,
         alignment: Alignment | None, settings: WalkSettings) -> FrameResult:
    triangles = frame_triangles(depth, rgb, camera, new, settings.min_view_cos)
    state.scene = bounded(TriangleSoup.join([state.scene, triangles]), settings.max_faces)
    state.frames_done += 1
    return FrameResult(rgb, depth, int(new.sum()), len(triangles.faces), alignment)
