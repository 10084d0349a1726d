"""What a finished walk writes besides its frames: the scene mesh (scene.ply with vertex
colours, scene.glb with COLOR_0, Y up as glTF wants, so Blender's importer puts it back Z up
where the cameras are) and the walk as a video (walk.mp4 through imageio-ffmpeg when it is
installed, else walk.gif)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..export import _Z_UP_TO_Y_UP
from .scene_mesh import TriangleSoup

FPS = 12


@dataclass
class SceneFiles:
    vertices: int
    faces: int


def write_scene(scene: TriangleSoup, out_dir: Path) -> SceneFiles:
    """scene.ply and scene.glb, vertices welded where frames share them exactly."""
    import trimesh

    colours = (scene.colours.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    mesh = trimesh.Trimesh(scene.vertices.numpy().astype(np.float64), scene.faces.numpy(),
                           vertex_colors=np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], 1),
                           process=False)
    mesh.merge_vertices()
    _replace(out_dir / "scene.ply", lambda path: mesh.export(path, file_type="ply"))
    gltf = mesh.copy()
    gltf.apply_transform(_Z_UP_TO_Y_UP)
    _replace(out_dir / "scene.glb", lambda path: gltf.export(path, file_type="glb"))
    return SceneFiles(len(mesh.vertices), len(mesh.faces))


def write_video(frames: list[Path], out_dir: Path) -> Path:
    """walk.mp4 (H.264 through imageio-ffmpeg) or, without it, walk.gif."""
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401 - the encoder imageio needs
    except ImportError:
        return _gif(frames, out_dir / "walk.gif")
    path = out_dir / "walk.mp4"
    images = [_even(np.asarray(Image.open(f).convert("RGB"))) for f in frames]
    # macro_block_size 1: the frames keep their size (imageio would pad them to multiples of 16).
    _replace(path, lambda p: iio.imwrite(p, np.stack(images), fps=FPS, codec="libx264", macro_block_size=1,
                                         extension=".mp4"))
    return path


def _gif(frames: list[Path], path: Path) -> Path:
    images = [Image.open(f).convert("RGB") for f in frames]
    _replace(path, lambda p: images[0].save(p, format="GIF", save_all=True, append_images=images[1:],
                                            duration=round(1000 / FPS), loop=0))
    return path


def _even(image: np.ndarray) -> np.ndarray:
    """H.264 wants even sides."""
    return image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]


def _replace(path: Path, write) -> None:
    """Write through a temporary name (its suffix kept: ffmpeg picks the format by it), so a
    kill mid-write leaves no half file."""
    part = path.with_name(f".{path.stem}.part{path.suffix}")
    write(part)
    part.replace(path)
