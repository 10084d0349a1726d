"""The one place where results become Blender data: a smooth mesh with a UV map and a
FLOAT_COLOR point colour attribute, wearing its textures or its colours (materials.py); novel
views as packed images and image planes; a scene walk's mesh where its cameras were and its
frames as an image sequence behind the camera. Main thread only (timers, operators)."""

from __future__ import annotations

import shutil
from array import array
from pathlib import Path

import bpy
from mathutils import Matrix

from . import cameras, materials, walks
from .jobs import TextureSet, ViewSet, WalkSet
from .plymesh import MeshArrays

COLLECTION = "Dreamsculpt"
SCENES_COLLECTION = "Dreamsculpt Scenes"


def _collection(scene: bpy.types.Scene, name: str = COLLECTION) -> bpy.types.Collection:
    collection = bpy.data.collections.get(name)
    if collection is None:
        collection = bpy.data.collections.new(name)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def build_mesh(name: str, arrays: MeshArrays) -> bpy.types.Mesh:
    """The arrays as a smooth-shaded mesh: the colour attribute (FLOAT_COLOR, POINT) when the
    PLY has colours, and the UV map (per loop: each face's three corners in order) when it has
    UVs. No material."""
    mesh = bpy.data.meshes.new(name)
    n_vertices, n_faces = arrays.vertex_count, arrays.face_count
    mesh.vertices.add(n_vertices)
    mesh.vertices.foreach_set("co", arrays.positions)
    mesh.loops.add(3 * n_faces)
    mesh.loops.foreach_set("vertex_index", arrays.triangles)
    mesh.polygons.add(n_faces)
    mesh.polygons.foreach_set("loop_start", array("i", range(0, 3 * n_faces, 3)))
    if len(arrays.colors) == 4 * n_vertices:
        colors = mesh.color_attributes.new(materials.COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        colors.data.foreach_set("color", arrays.colors)
        mesh.color_attributes.active_color = colors
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update(calc_edges=True)
    if n_faces and len(arrays.uvs) == 6 * n_faces:
        mesh.uv_layers.new(name=materials.UV_MAP).data.foreach_set("uv", arrays.uvs)
    mesh.shade_smooth()   # the backend's mesh is welded: smooth normals, no faceting
    return mesh


def import_result(context: bpy.types.Context, arrays: MeshArrays, name: str, properties: dict,
                  replace: bpy.types.Object | None = None, placement: list | None = None,
                  textures: TextureSet | None = None, collection: str = COLLECTION) -> bpy.types.Object:
    """Add the mesh as an object in `collection` ("Dreamsculpt"), with `properties` as custom
    properties: at the 3D cursor (its origin there: the backend's "bottom" origin stands it on
    the cursor), or, given `placement` (an image job's canonical -> world 4x4, row-major),
    where the camera saw the object. With `textures` (and UVs) it gets a material of its own
    with them packed; without, the shared vertex-colour material. `replace` (an earlier
    result) is removed, with its material if nothing else uses it."""
    scene = context.scene
    mesh = build_mesh(name, arrays)
    obj = bpy.data.objects.new(name, mesh)
    if textures is not None and mesh.uv_layers:
        mesh.materials.append(materials.textured_material(obj.name, textures))
    else:
        mesh.materials.append(materials.vertex_color_material())
    _collection(scene, collection).objects.link(obj)
    obj.location = scene.cursor.location.copy()
    for key, value in properties.items():
        obj[key] = value
    if replace is not None:
        obj.location, obj.rotation_euler, obj.scale = replace.location, replace.rotation_euler, replace.scale
    if placement is not None:
        obj.matrix_world = Matrix(placement)
    if replace is not None:
        old_mesh = replace.data
        bpy.data.objects.remove(replace)
        if old_mesh is not None and old_mesh.users == 0:
            old_materials = list(old_mesh.materials)
            bpy.data.meshes.remove(old_mesh)
            materials.remove_unused(old_materials)
    for other in context.view_layer.objects:
        if other is not None:   # the replaced object's base, until the view layer is synced again
            other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    bpy.ops.ed.undo_push(message=f"Dreamsculpt: import {name}")
    return obj


VIEWS_COLLECTION = "Dreamsculpt Views"


def load_view_images(views: ViewSet, label: str, properties: dict) -> tuple[list, bpy.types.Image | None]:
    """Load each view (and the contact sheet) as a packed image, so nothing is lost when the
    download folder goes; `properties` become custom properties. Returns (views, sheet)."""

    def load(path: str, name: str) -> bpy.types.Image:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
        image.pack()
        for key, value in properties.items():
            image[key] = value
        return image

    images = [load(view["path"], f"Dreamsculpt {label} {Path(view['file']).stem}") for view in views.views]
    sheet = load(views.sheet, f"Dreamsculpt {label} views") if views.sheet else None
    return images, sheet


def show_in_image_editor(context: bpy.types.Context, image: bpy.types.Image,
                         sequence: tuple[int, int] | None = None) -> bool:
    """Show `image` in the first open Image Editor (an image sequence: `sequence` is its first
    timeline frame and length, as _play_sequence sets them); False when none is open."""
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                if sequence is not None:
                    _play_sequence(area.spaces.active.image_user, *sequence)
                area.tag_redraw()
                return True
    return False


def _play_sequence(image_user: bpy.types.ImageUser, frame_start: int, length: int) -> None:
    """File n (0001.png on) of the sequence at timeline frame frame_start + n - 1: Blender
    shows file (frame - frame_start + 1 + offset), held at the last one after the end."""
    image_user.frame_start, image_user.frame_duration, image_user.frame_offset = frame_start, length, 0
    image_user.use_auto_refresh, image_user.use_cyclic = True, False


def view_material(image: bpy.types.Image) -> bpy.types.Material:
    """Unlit and alpha blended: the picture's colour as emission, its alpha as transparency."""
    material = bpy.data.materials.new(image.name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture, emission, transparent = (nodes.new("ShaderNodeTexImage"), nodes.new("ShaderNodeEmission"),
                                      nodes.new("ShaderNodeBsdfTransparent"))
    mix, output = nodes.new("ShaderNodeMixShader"), nodes.new("ShaderNodeOutputMaterial")
    texture.image = image
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(texture.outputs["Alpha"], mix.inputs["Fac"])
    links.new(transparent.outputs["BSDF"], mix.inputs[1])
    links.new(emission.outputs["Emission"], mix.inputs[2])
    links.new(mix.outputs["Shader"], output.inputs["Surface"])
    for node, x in ((texture, -600), (emission, -300), (transparent, -300), (mix, -100), (output, 100)):
        node.location = (x, -150 if node is transparent else 0)
    if hasattr(material, "surface_render_method"):   # EEVEE Next (4.2+)
        material.surface_render_method = "BLENDED"
    else:
        material.blend_method = "BLEND"
    material.use_backface_culling = False
    return material


def view_plane(name: str, image: bpy.types.Image, matrix: list, side: float) -> bpy.types.Object:
    """A square plane of side `side` with `image` on it, placed by `matrix` (4x4 row-major)."""
    h = side / 2.0
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(-h, -h, 0.0), (h, -h, 0.0), (h, h, 0.0), (-h, h, 0.0)], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", (0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0))
    mesh.materials.append(view_material(image))
    obj = bpy.data.objects.new(name, mesh)
    obj.matrix_world = Matrix(matrix)
    obj.visible_shadow = False
    return obj


def import_views(context: bpy.types.Context, views: ViewSet, label: str, planes: bool,
                 properties: dict) -> tuple[list[bpy.types.Image], list[bpy.types.Object]]:
    """The novel views as packed images, shown in an open Image Editor; with `planes`, also an
    image plane per view where its camera stands, facing the object, in "Dreamsculpt Views"."""
    images, sheet = load_view_images(views, label, properties)
    show_in_image_editor(context, sheet or images[0])
    objects = []
    if planes:
        collection = bpy.data.collections.get(VIEWS_COLLECTION) or bpy.data.collections.new(VIEWS_COLLECTION)
        if collection.name not in context.scene.collection.children:
            context.scene.collection.children.link(collection)
        centre = cameras.translation(views.placement)
        for view, image in zip(views.views, images):
            matrix, side = cameras.view_plane(view["matrix_world"], centre, float(view.get("fov_deg", 40.0)))
            obj = view_plane(image.name, image, matrix, side)
            for key, value in properties.items():
                obj[key] = value
            collection.objects.link(obj)
            objects.append(obj)
    shutil.rmtree(views.folder, ignore_errors=True)   # everything is packed
    bpy.ops.ed.undo_push(message=f"Dreamsculpt: novel views {label}")
    return images, objects


def import_walk_frames(context: bpy.types.Context, walk: WalkSet, folder: Path, camera: bpy.types.Object | None,
                       frame_start: int, frame_step: int, label: str, properties: dict) -> bpy.types.Image:
    """A scene walk's frames as an image sequence in `folder` (walks.lay_out_sequence: one file
    per timeline frame, so it advances every `frame_step` frames, frame k at frame_start + k *
    frame_step where path camera k is), shown behind `camera` (it replaces an earlier walk's
    there) and in an open Image Editor. The files stay in `folder` (emptied first: Import Again
    lays them out anew): a sequence is not packed."""
    shutil.rmtree(folder, ignore_errors=True)
    files = walks.lay_out_sequence(walk.frames, frame_step, folder)
    shutil.rmtree(walk.folder, ignore_errors=True)
    image = bpy.data.images.load(str(files[0]), check_existing=False)
    image.source, image.name = "SEQUENCE", f"Dreamsculpt walk {label}"
    for key, value in properties.items():
        image[key] = value
    if camera is not None and camera.type == "CAMERA":
        backgrounds = camera.data.background_images
        for old in [b for b in backgrounds if b.image is not None and "dreamsculpt_job_id" in b.image]:
            backgrounds.remove(old)
        background = backgrounds.new()
        background.image = image
        _play_sequence(background.image_user, frame_start, len(files))
        camera.data.show_background_images = True
    show_in_image_editor(context, image, (frame_start, len(files)))
    return image
