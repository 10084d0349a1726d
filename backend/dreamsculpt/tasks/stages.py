"""Stages more than one task goes through: the output folder, optimise-then-mesh, and where a
picture's canonical frame sits in the world. Each task's `run` calls them in its own order."""

from __future__ import annotations

import time
from pathlib import Path

from ..callbacks import Callbacks, Progress
from ..errors import DreamsculptError
from ..records import MeshOutputs, Placement

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


def optimise_and_mesh(trainer, out_dir: Path, callbacks: Callbacks, resume: bool, started: float) -> MeshOutputs:
    """Run `trainer` (from its checkpoint with `resume`) to the end, then mesh the field and write
    mesh.ply / mesh.glb (mesh.obj), preview.png and turntable.gif into `out_dir`."""
    from ..mesh import export_mesh, extract_mesh
    from ..preview import save_preview, save_turntable

    if resume:
        trainer.load_checkpoint(out_dir / CHECKPOINT)
    field = trainer.run()
    config, steps = trainer.config, trainer.config.train.steps
    report(callbacks, "meshing", trainer.step_index, steps, trainer.loss_ema, started)
    mesh, threshold = extract_mesh(field, config.mesh, trainer.occupancy)
    report(callbacks, "saving", trainer.step_index, steps, trainer.loss_ema, started)
    export_mesh(mesh, out_dir, obj=config.mesh.export_obj)
    save_preview(trainer, out_dir / "preview.png")
    save_turntable(trainer, out_dir / "turntable.gif")
    return MeshOutputs(steps=trainer.step_index, vertices=len(mesh.vertices), faces=len(mesh.faces),
                       threshold=threshold)


def placement(view) -> Placement:
    """Where the canonical frame of the picture `view` (a PictureView) sits in the world, and
    the picture's camera in both frames."""
    cam = view.camera
    return Placement(view.placement.tolist(), {
        "file": "reference.png", "source": Path(view.source).name,
        "azimuth_deg": float(cam.azimuth_deg[0]), "elevation_deg": float(cam.elevation_deg[0]),
        "distance": float(cam.distance[0]), "fov_deg": float(cam.fov_deg[0]),
        "c2w": cam.c2w[0].tolist(), "matrix_world": view.world_c2w.tolist()})
