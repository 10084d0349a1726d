"""Assets from a known surface: the UV rasterizer against hand-computed texels, baked textures
against the function they bake, seam padding, tangent-space normal maps, size and origin, and
the files (GLB, PLY, OBJ + MTL) read back by trimesh in the frames they promise."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from dreamsculpt.assets import fit_transform, make_asset
from dreamsculpt.config import MeshConfig
from dreamsculpt.export import export_asset
from dreamsculpt.mesh import Surface, decimate, extract_surface
from dreamsculpt.raster import cover
from dreamsculpt.tasks.stages import field_functions
from dreamsculpt.texture import (
    TexelSamples,
    UVLayout,
    bake,
    bake_normal_map,
    pad_seams,
    tangent_frames,
    unwrap,
)
from PIL import Image
from test_mesh import PEAK, AnalyticField

CENTRE, RADII = (0.1, 0.2, -0.1), (0.3, 0.45, 0.8)


def ellipsoid_config(**changes) -> MeshConfig:
    return MeshConfig(resolution=64, threshold=PEAK / 2, max_faces=2000, texture_size=256, **changes)


@pytest.fixture(scope="module")
def ellipsoid():
    """(dense surface, albedo, normals) of an off-centre ellipsoid with distinct half-axes, so
    any axis swap or sign flip in an exported file shows. Its albedo is
    ((x + 1) / 2, (y + 1) / 2, 0.25): linear, so a texture of it can be checked anywhere."""
    field = AnalyticField(centre=CENTRE, radii=RADII)
    dense, _ = extract_surface(field, ellipsoid_config())
    return (dense, *field_functions(field))


def linear_albedo(points: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
    return np.stack([(points[:, 0] + 1) / 2, (points[:, 1] + 1) / 2, np.full(len(points), 0.25)], 1)


def test_rasterizer_finds_every_texel_a_triangle_touches():
    # In texel units on an 8 x 8 image (y down): the triangle (1, 1), (5, 1), (1, 5) touches
    # the texels [j, j + 1] x [i, i + 1] of its bounding box (1 <= i, j <= 4) whose nearest
    # corner reaches the hypotenuse x + y = 6: i + j <= 6.
    corners = np.array([[1, 1], [5, 1], [1, 5]], dtype=np.float64)
    uv = np.stack([corners[:, 0] / 8, 1 - corners[:, 1] / 8], -1)
    samples = TexelSamples.of(UVLayout(np.arange(3), np.array([[0, 1, 2]]), uv, 8))
    expected = {(i, j) for i in range(1, 5) for j in range(1, 5) if i + j <= 6}
    assert set(zip(samples.rows.tolist(), samples.cols.tolist())) == expected
    # Each sample is its texel's centre, moved onto the triangle's edge when it is outside.
    points = samples.bary.astype(np.float64) @ corners
    centres = np.stack([samples.cols + 0.5, samples.rows + 0.5], -1)
    held = centres.sum(-1) <= 6
    assert np.allclose(points[held], centres[held], atol=1e-5)
    assert (points[~held].sum(-1) <= 6 + 1e-5).all()
    assert np.linalg.norm(points - centres, axis=-1).max() < 1.0       # within its texel's reach
    assert (samples.bary >= 0).all() and np.allclose(samples.bary.sum(-1), 1, atol=1e-6)


def test_baked_texture_is_the_function_at_the_surface_behind_each_texel(ellipsoid):
    dense = decimate(ellipsoid[0], 2000)
    layout = unwrap(dense, 256)
    texture = bake(layout, dense.vertices, dense.vertex_normals(), linear_albedo)
    # Sample the texture where each UV vertex lies (nearest texel) and compare with the albedo
    # of the vertex: one texel of position error is 2 / 256 of the object at most.
    cols = np.clip((layout.uvs[:, 0] * 256).astype(int), 0, 255)
    rows = np.clip(((1 - layout.uvs[:, 1]) * 256).astype(int), 0, 255)
    expected = linear_albedo(dense.vertices[layout.vertex_of])
    assert np.abs(texture[rows, cols] - expected).max() < 0.02


def test_seam_padding_leaves_no_empty_texel_around_a_chart():
    image = np.zeros((16, 16, 3), np.float32)
    covered = np.zeros((16, 16), bool)
    covered[4:8, 4:8], image[4:8, 4:8] = True, (1.0, 0.5, 0.25)
    covered[10:12, 10:14], image[10:12, 10:14] = True, (0.2, 0.4, 0.6)
    padded = pad_seams(image, covered)
    assert (padded.sum(-1) > 0).all()
    assert np.allclose(padded[covered], image[covered])          # charts untouched
    assert np.allclose(padded[3, 5], (1.0, 0.5, 0.25)) and np.allclose(padded[12, 13], (0.2, 0.4, 0.6))


def test_normal_map_of_the_surface_itself_is_flat_and_of_a_tilt_reads_back(ellipsoid):
    dense, _, _ = ellipsoid
    sphere = Surface(*(np.asarray(a) for a in (trimesh.creation.icosphere(3).vertices.astype(np.float32),
                                               trimesh.creation.icosphere(3).faces)))
    normals = sphere.vertex_normals()
    layout = unwrap(sphere, 128)
    samples = TexelSamples.of(layout)
    exact = bake_normal_map(layout, sphere.vertices, normals, lambda p: p / np.linalg.norm(p, axis=1, keepdims=True))
    flat = exact[samples.rows, samples.cols]
    assert np.abs(flat - (0.5, 0.5, 1.0)).max() < 0.06        # facets vs the sphere: a few degrees
    # A detail normal tilted towards +Z, decoded with the same tangent frames, is +Z again.
    tilted = lambda p: p / np.linalg.norm(p, axis=1, keepdims=True) + np.array([0.0, 0.0, 0.5])  # noqa: E731
    local = bake_normal_map(layout, sphere.vertices, normals, tilted, samples)[samples.rows, samples.cols] * 2 - 1
    tangent, sign = tangent_frames(layout, sphere.vertices, normals)
    n = samples.interpolate(normals[layout.vertex_of][layout.faces])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t = samples.interpolate(tangent[layout.faces])
    t = t - n * (n * t).sum(-1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(n, t) * sign[layout.faces[samples.face, 0]][:, None]
    world = local[:, :1] * t + local[:, 1:2] * b + local[:, 2:] * n
    points = samples.interpolate(sphere.vertices[layout.vertex_of][layout.faces])
    want = tilted(points) / np.linalg.norm(tilted(points), axis=1, keepdims=True)
    assert np.percentile((world * want).sum(-1), 5) > 0.99


def test_bitangent_follows_increasing_v():
    # A unit square in the XY plane mapped straight onto UV space: tangent +X, bitangent +Y.
    square = Surface(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32),
                     np.array([[0, 1, 2], [0, 2, 3]]))
    layout = UVLayout(np.arange(4), square.faces, square.vertices[:, :2].copy(), 4)
    tangent, sign = tangent_frames(layout, square.vertices, np.tile([[0, 0, 1.0]], (4, 1)).astype(np.float32))
    assert np.allclose(tangent, [1, 0, 0]) and (sign == 1).all()


def test_size_and_origin():
    vertices = np.array([[-1, 0, 2], [3, 1, 2.5], [0, 2, 4]], dtype=np.float32)   # extents 4, 2, 2
    sized = fit_transform(vertices, 2.0, "bottom").apply(vertices)
    assert (sized.max(0) - sized.min(0)).tolist() == pytest.approx([2.0, 1.0, 1.0])
    assert sized[:, 2].min() == pytest.approx(0.0)
    assert ((sized.max(0) + sized.min(0)) / 2)[:2].tolist() == pytest.approx([0.0, 0.0])
    centred = fit_transform(vertices, None, "center").apply(vertices)
    assert ((centred.max(0) + centred.min(0)) / 2).tolist() == pytest.approx([0, 0, 0], abs=1e-6)
    assert (centred.max(0) - centred.min(0)).tolist() == pytest.approx([4.0, 2.0, 2.0])


def load_glb(path) -> trimesh.Trimesh:
    scene = trimesh.load(path)
    return scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene


def test_glb_and_ply_carry_uvs_normals_texture_and_their_frames(ellipsoid, tmp_path):
    dense, _, normals = ellipsoid
    asset = make_asset(dense, linear_albedo, ellipsoid_config(), normals)
    written = export_asset(asset, tmp_path)
    assert sorted(p.name for p in written) == ["mesh.glb", "mesh.ply", "texture.png"]
    assert set(asset.seconds) == {"decimate", "unwrap", "bake", "export"}

    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    # The engine frame is Z up, centred on the bounding box (origin "center"): the 0.8 half-axis is Z.
    assert ply.extents.tolist() == pytest.approx([0.6, 0.9, 1.6], abs=0.04)
    assert ply.bounds.mean(0).tolist() == pytest.approx([0, 0, 0], abs=1e-5)
    assert ply.visual.uv.shape == (len(ply.vertices), 2)
    colours = np.asarray(ply.vertex_attributes["color"])[:, :3] / 255.0
    assert np.abs(colours.mean(0) - linear_albedo(dense.vertices).mean(0)).max() < 0.02

    glb = load_glb(tmp_path / "mesh.glb")
    # glTF is Y up: (x, y, z) -> (x, z, -y). The glb's up (Y) extent is the ply's Z extent.
    assert glb.extents.tolist() == pytest.approx([ply.extents[0], ply.extents[2], ply.extents[1]], abs=1e-4)
    material = glb.visual.material
    assert material.baseColorTexture.size == (256, 256) and material.normalTexture is None
    assert (material.metallicFactor, material.roughnessFactor) == (0.0, 0.9)
    assert glb.visual.uv.shape == (len(glb.vertices), 2)
    # The exported normals point outwards (the glb is centred on the origin).
    assert (np.einsum("ij,ij->i", glb.vertex_normals, glb.vertices) > 0).mean() > 0.99
    welded = glb.copy()
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    assert welded.is_watertight and len(welded.faces) <= 2000
    # Colour sampled from the texture at the surface is the albedo there.
    sampled = np.asarray(glb.visual.to_color().vertex_colors)[:, :3] / 255.0
    z_up = glb.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])     # glTF -> engine frame
    truth = linear_albedo(z_up / asset.transform.scale + np.asarray(asset.transform.anchor))
    assert np.abs(sampled - truth).max() < 0.03


def test_obj_and_mtl_use_the_texture_and_sit_z_up(ellipsoid, tmp_path):
    dense, colour, normals = ellipsoid
    asset = make_asset(dense, colour, ellipsoid_config(normal_map=True, size=2.0, origin="bottom"), normals)
    names = sorted(p.name for p in export_asset(asset, tmp_path, obj=True))
    assert names == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply", "normal.png", "texture.png"]
    assert "map_Kd texture.png" in (tmp_path / "mesh.mtl").read_text()
    obj = trimesh.load(tmp_path / "mesh.obj", process=False)
    assert obj.extents.max() == pytest.approx(2.0, abs=1e-4) and obj.extents.argmax() == 2
    assert obj.bounds[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert isinstance(obj.visual.material.image, Image.Image)
    glb = load_glb(tmp_path / "mesh.glb")
    assert glb.visual.material.normalTexture.size == (256, 256)
    assert glb.bounds[0, 1] == pytest.approx(0.0, abs=1e-6)      # Y up in glTF: the bottom at y = 0


def test_an_image_jobs_placement_undoes_size_and_origin():
    from types import SimpleNamespace

    import torch
    from dreamsculpt.tasks.stages import placement

    world = np.array([[0.5, 0, 0, 1.0], [0, 0.5, 0, 2.0], [0, 0, 0.5, 0.5], [0, 0, 0, 1]])   # canonical -> world
    camera = SimpleNamespace(azimuth_deg=torch.zeros(1), elevation_deg=torch.zeros(1), distance=torch.ones(1),
                             fov_deg=torch.ones(1), c2w=torch.eye(4)[None])
    view = SimpleNamespace(placement=torch.tensor(world), camera=camera, source="shot.png", world_c2w=torch.eye(4))
    canonical = np.array([[-0.3, -0.2, -0.4], [0.5, 0.1, 0.6], [0.0, 0.4, -0.1]], dtype=np.float32)
    transform = fit_transform(canonical, 2.0, "bottom")
    matrix = np.asarray(placement(view, transform).matrix)
    asset = np.c_[transform.apply(canonical), np.ones(3)]
    # The sized, re-origined mesh lands exactly where the canonical one did.
    assert np.allclose(asset @ matrix.T, np.c_[canonical, np.ones(3)] @ world.T, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["cube", "sphere", "torus", "cone", "cylinder"])
def test_the_texture_shows_what_the_field_shows(shape):
    """Each built-in shape in red at the preview preset as it ships (600 steps): the textured
    asset rendered from 8 views matches the field's own renders where both show the surface
    (PSNR ≥ 28 dB; measured 30.7–34.7). Whole views also count the silhouettes, where a hard
    mesh edge meets the field's soft one (measured 23.9–26.4): ≥ 22 dB. About 27 s a shape."""
    from dreamsculpt.metrics import texture_fidelity
    from dreamsculpt.optimize import Trainer, TrainingViews
    from dreamsculpt.priors import text_prior
    from dreamsculpt.requests import TextTo3DRequest

    config = TextTo3DRequest(kind="text_to_3d", prompt=f"a red {shape}", prior="builtin", preset="preview").to_config()
    prior = text_prior(config.guidance, config.render.resolution, TrainingViews.of(config))
    trainer = Trainer(config, prior.guidance, views=prior.views)
    field = trainer.run()
    dense, _ = extract_surface(field, config.mesh, trainer.occupancy)
    asset = make_asset(dense, field_functions(field)[0], config.mesh)
    whole, surface = texture_fidelity(field, asset, trainer.occupancy)
    print(f"{shape}: texture PSNR {surface:.1f} dB on the surface, {whole:.1f} dB over whole views")
    assert surface >= 28.0 and whole >= 22.0
    assert asset.surface.is_watertight() and len(asset.surface.faces) <= 10_000


def test_triangles_of_every_size_are_covered():
    # Bounding boxes of 1 to 100 pixels (every power-of-two group, and sizes between): each
    # right triangle covers the centres on or below its diagonal.
    for side in (1, 3, 8, 18, 33, 100):
        xy = np.array([[[0, 0], [side, 0], [0, side]]], dtype=np.float64) + 0.01
        found = cover(xy, 128)
        expected = sum(1 for i in range(side) for j in range(side) if (i + 0.5) + (j + 0.5) <= side + 0.02)
        assert len(found.rows) == expected, side
