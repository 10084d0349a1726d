"""Writing an `Asset` as files that drop into a scene or an engine as they are.

- mesh.glb: positions, NORMAL, TEXCOORD_0 and a PBR material (metallic 0, roughness 0.9) with
  the base-colour texture embedded (and the normal map, when baked). glTF is Y up, so the
  asset's Z-up frame is turned (x, y, z) -> (x, z, -y); importers (Blender's included) turn it back.
- mesh.ply: the welded mesh (watertight, one vertex per surface point) in the Z-up frame, with
  vertex normals, vertex colours (the albedo) and per-face-corner UVs (a `texcoord` list of
  six floats per face, which trimesh and the Blender add-on read).
- texture.png (and normal.png): the textures, written beside the meshes.
- mesh.obj + mesh.mtl, on request: the same UV mesh in the Z-up frame, using texture.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from .assets import Asset
from .texture import to_bytes

TEXTURE, NORMAL_MAP = "texture.png", "normal.png"
METALLIC, ROUGHNESS = 0.0, 0.9

# glTF is +Y up; the engine (and Blender) is +Z up: (x, y, z) -> (x, z, -y).
_Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def export_asset(asset: Asset, out_dir: Path, obj: bool = False) -> list[Path]:
    """Write mesh.glb, mesh.ply, texture.png (normal.png) and, with `obj`, mesh.obj and
    mesh.mtl into `out_dir`; records the time taken in asset.seconds["export"]."""
    tick = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    texture = Image.fromarray(to_bytes(asset.texture))
    normal_map = None if asset.normal_map is None else Image.fromarray(to_bytes(asset.normal_map))
    written = [out_dir / TEXTURE]
    texture.save(written[0])
    if normal_map is not None:
        written.append(out_dir / NORMAL_MAP)
        normal_map.save(written[-1])
    written.append(write_glb(asset, texture, normal_map, out_dir / "mesh.glb"))
    written.append(write_ply(asset, out_dir / "mesh.ply"))
    if obj:
        written += write_obj(asset, out_dir / "mesh.obj")
    asset.seconds["export"] = round(time.perf_counter() - tick, 3)
    return written


def uv_mesh(asset: Asset) -> trimesh.Trimesh:
    """The asset as one trimesh with a vertex per UV vertex (seams split), its normals cached."""
    layout = asset.layout
    return trimesh.Trimesh(asset.surface.vertices[layout.vertex_of], layout.faces, process=False,
                           vertex_normals=asset.normals[layout.vertex_of])


def write_glb(asset: Asset, texture: Image.Image, normal_map: Image.Image | None, path: Path) -> Path:
    mesh = uv_mesh(asset)
    material = trimesh.visual.material.PBRMaterial(
        name="dreamsculpt", baseColorTexture=texture, normalTexture=normal_map,
        metallicFactor=METALLIC, roughnessFactor=ROUGHNESS)
    mesh.visual = trimesh.visual.TextureVisuals(uv=asset.layout.uvs, material=material)
    mesh.apply_transform(_Z_UP_TO_Y_UP)
    path.write_bytes(mesh.export(file_type="glb", include_normals=True))
    return path


def write_ply(asset: Asset, path: Path) -> Path:
    """Binary PLY: vertices (x y z, nx ny nz, red green blue alpha) and faces (vertex_indices,
    texcoord: u0 v0 u1 v1 u2 v2)."""
    surface, layout = asset.surface, asset.layout
    vertex = np.zeros(len(surface.vertices), dtype=[("p", "<f4", 3), ("n", "<f4", 3), ("c", "u1", 4)])
    vertex["p"], vertex["n"] = surface.vertices, asset.normals
    vertex["c"][:, :3], vertex["c"][:, 3] = to_bytes(asset.colours), 255
    face = np.zeros(len(surface.faces), dtype=[("k", "u1"), ("v", "<i4", 3), ("m", "u1"), ("uv", "<f4", 6)])
    face["k"], face["v"], face["m"] = 3, surface.faces, 6
    face["uv"] = layout.uvs[layout.faces].reshape(-1, 6)
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", "comment made by Dreamsculpt",
        f"element vertex {len(vertex)}",
        *(f"property float {name}" for name in ("x", "y", "z", "nx", "ny", "nz")),
        *(f"property uchar {name}" for name in ("red", "green", "blue", "alpha")),
        f"element face {len(face)}", "property list uchar int vertex_indices",
        "property list uchar float texcoord", "end_header", ""])
    path.write_bytes(header.encode("ascii") + vertex.tobytes() + face.tobytes())
    return path


def write_obj(asset: Asset, path: Path) -> list[Path]:
    """mesh.obj (positions, UVs, normals; one index triple per corner) and mesh.mtl."""
    surface, layout = asset.surface, asset.layout
    mtl = path.with_suffix(".mtl")
    lines = [f"# made by Dreamsculpt (Z up)\nmtllib {mtl.name}\nusemtl dreamsculpt"]
    lines += [_rows("v", surface.vertices), _rows("vt", layout.uvs), _rows("vn", asset.normals)]
    corners = np.stack([surface.faces + 1, layout.faces + 1, surface.faces + 1], -1)   # v/vt/vn
    lines.append("\n".join("f " + " ".join(f"{a}/{b}/{c}" for a, b, c in face) for face in corners.tolist()))
    path.write_text("\n".join(lines) + "\n")
    material = ["newmtl dreamsculpt", "Ka 1 1 1", "Kd 1 1 1", "Ks 0 0 0", "d 1", "illum 1",
                f"Pr {ROUGHNESS}", f"Pm {METALLIC}", f"map_Kd {TEXTURE}"]
    if asset.normal_map is not None:
        material.append(f"norm {NORMAL_MAP}")
    mtl.write_text("\n".join(material) + "\n")
    return [path, mtl]


def _rows(tag: str, values: np.ndarray) -> str:
    return "\n".join(f"{tag} " + " ".join(f"{x:.6g}" for x in row) for row in values.tolist())
