"""What a run made and how: one typed record per run, written as run.json by one writer for
every kind, and the `TaskResult` a task returns to the CLI or the job server.

run.json, every kind::

    dreamsculpt_version, kind, request (as validated), prior, prior_detail, model, seed,
    seconds, device, <the kind's outputs>, config (the engine's RunConfig)

plus, where there is one, `placement` (canonical -> world 4x4) and `reference` (the picture's
camera), `reference_weights`, and for the optimising kinds `training_views` (the cameras and
shading the prior asked for) and `ms_per_step`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__


@dataclass
class MeshOutputs:
    """An optimised field made an asset (assets.py): mesh.glb, mesh.ply, texture.png
    (normal.png), mesh.obj + mesh.mtl when asked, preview.png, turntable.gif."""

    steps: int              # optimisation steps the field has had
    vertices: int           # of the decimated, welded mesh (mesh.ply)
    faces: int
    threshold: float        # density level of the surface
    dense_faces: int = 0    # of the marching-cubes surface, before decimation
    watertight: bool = False
    texture: str = "texture.png"
    texture_size: int = 0
    normal_map: str | None = None      # "normal.png" when baked
    size: list[float] = field(default_factory=list)   # the bounding box along x, y, z (metres when sized)
    origin: str = "center"
    scale: float = 1.0      # asset units per field unit ...
    anchor: list[float] = field(default_factory=list)   # ... and the field point made the origin:
    # asset = scale * (field - anchor)
    asset_seconds: dict[str, float] = field(default_factory=dict)   # decimate, unwrap, bake, export
    refine_steps: int = 0   # mesh refinement steps the surface has had (0: the field's own surface)
    refine_ms_per_step: dict[str, float] = field(default_factory=dict)   # extract, render, guidance, backward

    def summary(self, out_dir: Path, seconds: float) -> str:
        return (f"wrote {out_dir}/mesh.glb ({self.vertices} vertices, {self.faces} faces, "
                f"{self.texture_size}² texture) in {seconds:.0f} s")


@dataclass
class ViewsOutputs:
    """Images of the object around the picture: view_00.png (the picture) ... and views.json."""

    views: int              # images made, view_00.png (the reference) included
    sample_steps: int       # denoising steps per made view
    seconds_per_view: float

    def summary(self, out_dir: Path, seconds: float) -> str:
        return f"wrote {self.views} views to {out_dir}/ (novel_views.png) in {seconds:.0f} s"


@dataclass
class WalkOutputs:
    """A scene walk: frames/0000.png..., depth/0000.png... (16-bit mm), the walk's video,
    scene.ply and scene.glb (vertex colours), cameras.json."""

    frames: int
    width: int
    height: int
    vertices: int           # of the scene mesh
    faces: int
    video: str              # walk.mp4, or walk.gif without an encoder
    per_frame: list[dict[str, Any]] = field(default_factory=list)   # new pixels, faces, the depth fit

    def summary(self, out_dir: Path, seconds: float) -> str:
        return (f"wrote {out_dir}/scene.glb ({self.faces} faces) and {self.frames} frames ({self.video}) "
                f"in {seconds:.0f} s")


@dataclass
class Placement:
    """Where an image kind's canonical frame sits in the world: `matrix` maps canonical ->
    world (4x4, row-major); `reference` is the picture's camera in both frames."""

    matrix: list[list[float]]
    reference: dict[str, Any]


@dataclass
class PriorRecord:
    name: str               # the request's prior: sd, builtin, references, zero123
    detail: str             # one line: what exactly guided the run
    model: str | None       # the model loaded (hub id, folder or file); None for image sets


@dataclass
class RunRecord:
    kind: str
    request: dict[str, Any]         # the request as validated (what was asked)
    prior: PriorRecord
    seed: int
    seconds: float
    device: str
    outputs: MeshOutputs | ViewsOutputs | WalkOutputs
    config: dict[str, Any]          # the engine's RunConfig, for reproducing the run
    placement: Placement | None = None
    reference_weights: tuple[float, float] | None = None   # image_to_3d: (rgb, mask)
    training_views: dict[str, Any] | None = None    # the cameras and shading the prior asked for
    ms_per_step: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "dreamsculpt_version": __version__, "kind": self.kind, "request": self.request,
            "prior": self.prior.name, "prior_detail": self.prior.detail, "model": self.prior.model,
            "seed": self.seed, "seconds": round(self.seconds, 2), "device": self.device,
            **asdict(self.outputs),
        }
        if self.placement is not None:
            record.update(placement=self.placement.matrix, reference=self.placement.reference)
        if self.reference_weights is not None:
            record["reference_weights"] = list(self.reference_weights)
        if self.training_views is not None:
            record["training_views"] = self.training_views
        if self.ms_per_step:
            record["ms_per_step"] = self.ms_per_step
        record["config"] = self.config
        return record

    def write(self, out_dir: Path) -> Path:
        return write_json(Path(out_dir) / "run.json", self.to_json())


@dataclass
class TaskResult:
    """What a task hands back: where it wrote, and the record it wrote there."""

    out_dir: Path
    record: RunRecord

    @property
    def seconds(self) -> float:
        return self.record.seconds

    def outputs(self) -> dict[str, Any]:
        """The kind's outputs by name (the job server's result fields)."""
        return asdict(self.record.outputs)

    def summary(self) -> str:
        """One line: what was written where (the CLI prints it, the server logs it)."""
        return self.record.outputs.summary(self.out_dir, self.record.seconds)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON, replacing `path` atomically (readers never see half)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path
