"""Stages more than one task goes through: the output folder, optimise-then-mesh, and where a
picture's canonical frame sits in the world. Each task's `run` calls them in its own order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..callbacks import Callbacks, Progress
from ..errors import DreamsculptError
from ..records import MeshOutputs, Placement

if TYPE_CHECKING:
    import numpy as np

#: The field's checkpoint in a mesh kind's output folder (--resume continues from it).
CHECKPOINT = "checkpoint.pt"


def check_resume(out_dir: Path, resume: bool) -> Path:
    """The checkpoint path; with `resume`, it must exist."""
    checkpoint = Path(out_dir) / CHECKPOINT
    if resume and not checkpoint.exists():
        raise DreamsculptError(f"Nothing to resume: {checkpoint} does not exist. Run without --resume.")
    return checkpoint


def make_folder(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create the output folder {out_dir}: {exc.strerror}. Pick another --out.") \
            from exc
    return out_dir


def report(callbacks: Callbacks, stage: str, step: int, total: int, loss: float, started: float) -> None:
    if callbacks.on_progress:
        callbacks.on_progress(Progress(step, total, loss, time.perf_counter() - started, 0.0, stage))


def optimise_and_mesh(trainer, out_dir: Path, callbacks: Callbacks, resume: bool, started: float,
                      fine_guidance=None):
    """Run `trainer` (from its checkpoint with `resume`) to the end; with config.refine.steps,
    refine its surface as a mesh (refine.Refiner, guided by `fine_guidance`, from its own
    checkpoint with `resume`); make the surface an asset (assets.make_asset) and write it
    (export.export_asset), preview.png and turntable.gif into `out_dir`. Returns
    (MeshOutputs, the asset's AssetTransform)."""
    from ..assets import make_asset
    from ..export import NORMAL_MAP, TEXTURE, export_asset
    from ..mesh import extract_surface
    from ..preview import render_views, save_pictures

    if resume:
        trainer.load_checkpoint(out_dir / CHECKPOINT)
    field = trainer.run()
    config, steps = trainer.config, trainer.config.train.steps

    def stage(name: str) -> None:
        report(callbacks, name, trainer.step_index, steps, trainer.loss_ema, started)

    refiner = None
    if config.refine.steps:
        from ..refine import CHECKPOINT as REFINED
        from ..refine import Refiner

        trainer.save_checkpoint()   # the finished field: a resume while refining starts from it
        report(callbacks, "refining", 0, config.refine.steps, trainer.loss_ema, started)
        refiner = Refiner(trainer, fine_guidance, callbacks, out_dir / REFINED)
        if resume and (out_dir / REFINED).exists():
            refiner.load_checkpoint(out_dir / REFINED)
        dense = refiner.run()
        refiner.save_checkpoint()
        threshold = refiner.threshold
        colour, normals = refined_functions(refiner.field, dense)
        pictures = refiner.pictures
    else:
        stage("meshing")
        dense, threshold = extract_surface(field, config.mesh, trainer.occupancy)
        colour, normals = field_functions(field)
        pictures = lambda azimuths: render_views(trainer, azimuths)  # noqa: E731
    asset = make_asset(dense, colour, config.mesh, normals, stage)
    stage("saving")
    export_asset(asset, out_dir, obj=config.mesh.export_obj)
    save_pictures(pictures, out_dir)
    m = config.mesh
    outputs = MeshOutputs(
        steps=trainer.step_index, vertices=len(asset.surface.vertices), faces=len(asset.surface.faces),
        threshold=threshold, dense_faces=len(dense.faces), watertight=asset.surface.is_watertight(),
        texture=TEXTURE, texture_size=m.texture_size, normal_map=NORMAL_MAP if m.normal_map else None,
        size=asset.extent, origin=m.origin, scale=asset.transform.scale,
        anchor=list(asset.transform.anchor), asset_seconds=asset.seconds,
        refine_steps=refiner.step_index if refiner else 0,
        refine_ms_per_step=refiner.ms_per_step() if refiner else {})
    return outputs, asset.transform


def refined_functions(field, surface):
    """(the albedo seen at surface points, the refined surface's own normal at points) for
    assets.make_asset: the texture field's colour through the band the refinement trained it
    on, and the normal of the nearest vertex of the dense refined surface."""
    from scipy.spatial import cKDTree

    colour, _ = field_functions(field)
    tree, vertex_normals = cKDTree(surface.vertices), surface.vertex_normals()

    def normals(points: np.ndarray) -> np.ndarray:
        return vertex_normals[tree.query(points)[1]]

    return colour, normals


def field_functions(field):
    """(the albedo seen at surface points with normals, the outward normal at points) of
    `field`, as functions of numpy arrays [P, 3] -> [P, 3] (what assets.make_asset takes)."""
    import numpy as np
    import torch

    device = field.planes.device

    def colour(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)  # noqa: E731
        return field.seen_albedo(tensor(points), tensor(normals)).cpu().numpy()

    @torch.no_grad()
    def normals(points: np.ndarray) -> np.ndarray:
        chunks = torch.from_numpy(points).to(device).split(1 << 16)
        return torch.cat([field.normals(c) for c in chunks]).cpu().numpy()

    return colour, normals


def placement(view, transform=None) -> Placement:
    """Where the canonical frame of the picture `view` (a PictureView) sits in the world, and
    the picture's camera in both frames. With the AssetTransform `transform` a mesh was made
    with, the matrix places that mesh: the object lands where the camera saw it, whatever
    --size and --origin did to the mesh."""
    import numpy as np

    cam = view.camera
    matrix = np.asarray(view.placement, dtype=np.float64)
    if transform is not None:
        matrix = matrix @ np.linalg.inv(transform.matrix())
    return Placement(matrix.tolist(), {
        "file": "reference.png", "source": Path(view.source).name,
        "azimuth_deg": float(cam.azimuth_deg[0]), "elevation_deg": float(cam.elevation_deg[0]),
        "distance": float(cam.distance[0]), "fov_deg": float(cam.fov_deg[0]),
        "c2w": cam.c2w[0].tolist(), "matrix_world": view.world_c2w.tolist()})
