"""The picture of an image job: the active camera rendered into a transparent-film PNG (RGBA,
8 bit; the alpha is the object's mask) with its CameraSpec and the depth of what it sees, or a
picked file, checked first; and a scene walk's start frame, an opaque render with its view depth
(the Z pass). Main thread only (one short render, like F12 but with few samples); every render
setting it touches is put back.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from array import array
from contextlib import contextmanager, nullcontext
from pathlib import Path

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from . import cameras, walks
from .client import BackendError, image_type
from .job_requests import JobImage
from .preferences import user_folder

#: Object types with geometry a render shows.
SOLID_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT"}
#: The novel-view image planes: never part of a capture.
VIEWS_COLLECTION = "Dreamsculpt Views"


class CaptureError(BackendError):
    """The scene cannot be captured; str() says what to change."""


def active_camera(scene) -> bpy.types.Object:
    camera = scene.camera
    if camera is None or camera.type != "CAMERA":
        raise CaptureError("The scene has no active camera. Add a camera and make it active (View > Cameras > "
                           "Set Active Object as Camera), or pick an image file as the source.")
    if camera.data.type != "PERSP":
        kind = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(camera.data.type, camera.data.type.lower())
        raise CaptureError(f"The camera '{camera.name}' is {kind}; only perspective cameras can be used. Set its "
                           "Lens > Type to Perspective, or pick an image file as the source.")
    return camera


def camera_spec(camera: bpy.types.Object) -> cameras.CameraSpec:
    data = camera.data
    return cameras.CameraSpec([list(row) for row in camera.matrix_world], data.lens, data.sensor_width,
                              data.sensor_height, data.sensor_fit, data.shift_x, data.shift_y)


def _view_planes() -> set:
    collection = bpy.data.collections.get(VIEWS_COLLECTION)
    return set(collection.all_objects) if collection is not None else set()


def _in_view(scene, camera, corners) -> bool:
    """Whether a world box (8 corners) overlaps the camera's frame, in front of the camera."""
    projected = [world_to_camera_view(scene, camera, corner) for corner in corners]
    front = [p for p in projected if p.z > 0]
    if not front:
        return False
    if len(front) < len(projected):
        return True   # the box reaches behind the camera: count it (the camera may sit inside it)
    xs, ys = [p.x for p in front], [p.y for p in front]
    return max(xs) >= 0 and min(xs) <= 1 and max(ys) >= 0 and min(ys) <= 1


def visible_corners(scene, camera, depsgraph) -> list[tuple[float, float, float]]:
    """World bounding-box corners of the visible, renderable objects inside the camera's view."""
    planes = _view_planes()
    points = []
    for obj in scene.objects:
        if obj.type not in SOLID_TYPES or obj in planes or obj.hide_render or not obj.visible_get():
            continue
        evaluated = obj.evaluated_get(depsgraph)
        corners = [evaluated.matrix_world @ Vector(corner) for corner in evaluated.bound_box]
        if _in_view(scene, camera, corners):
            points.extend(tuple(c) for c in corners)
    return points


@contextmanager
def _changed(*groups):
    """Each group is (owner, {attribute: value}). Set them in order; afterwards put every old
    value back, the groups in reverse and each group's attributes in its own order (an image
    format's media type before its file format before its colour mode)."""
    saved = []
    try:
        for owner, values in groups:
            old = {name: getattr(owner, name) for name in values if hasattr(owner, name)}
            saved.append((owner, old))
            for name in old:
                setattr(owner, name, values[name])
        yield
    finally:
        for owner, old in reversed(saved):
            for name, value in old.items():
                try:
                    setattr(owner, name, value)
                except (TypeError, ValueError, AttributeError) as exc:   # put the others back all the same
                    print(f"Dreamsculpt: could not restore {name} = {value!r}: {exc}")


def _view_layer(scene) -> bpy.types.ViewLayer:
    layer = bpy.context.view_layer
    return layer if layer.name in scene.view_layers else scene.view_layers[0]


@contextmanager
def _depth_pass(scene, folder: Path):
    """While it lasts, a render also writes its Z pass into `folder` as a float EXR: the
    scene's compositor is swapped for one of ours that passes the render through unchanged and
    sends Depth to a File Output node. Blender 5's Z pass is view depth (along the camera's
    axis, not along the ray: measured in Cycles, EEVEE and Workbench), in world units; where
    nothing is hit it is 1e10 (Cycles, Workbench) or the camera's clip end (EEVEE)."""
    tree = bpy.data.node_groups.new("Dreamsculpt depth", "CompositorNodeTree")
    layer = _view_layer(scene)
    try:
        # The pass first: Render Layers shows a Depth output only while the layer has it.
        with _changed((layer, {"use_pass_z": True}), (scene, {"compositing_node_group": tree})):
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            nodes = tree.nodes
            render_layers, output, depth = (nodes.new("CompositorNodeRLayers"), nodes.new("NodeGroupOutput"),
                                            nodes.new("CompositorNodeOutputFile"))
            render_layers.scene, render_layers.layer = scene, layer.name
            depth.directory, depth.file_name = str(folder) + "/", "depth"
            depth.format.media_type, depth.format.file_format = "IMAGE", "OPEN_EXR"
            depth.format.color_depth, depth.format.color_mode = "32", "BW"
            depth.file_output_items.new("FLOAT", "Depth")
            tree.links.new(render_layers.outputs["Image"], output.inputs[0])
            tree.links.new(render_layers.outputs["Depth"], depth.inputs["Depth"])
            yield
    finally:
        bpy.data.node_groups.remove(tree)


def _read_depth(folder: Path, width: int, height: int) -> array:
    """The Z pass _depth_pass wrote: 'f', width x height, rows bottom-up (Blender's order)."""
    files = sorted(folder.glob("*.exr"))
    if not files:
        raise CaptureError("The render wrote no depth pass. Check that the scene renders with F12 (Cycles, EEVEE "
                           "or Workbench), or start the walk from the prompt.")
    image = bpy.data.images.load(str(files[0]), check_existing=False)
    try:
        image.colorspace_settings.is_data = True          # depth, not colour: no conversion
        if tuple(image.size) != (width, height):
            raise CaptureError(f"The depth pass is {image.size[0]}x{image.size[1]}, the render {width}x{height}.")
        values = array("f", bytes(4 * width * height * image.channels))
        image.pixels.foreach_get(values)
        return values[::image.channels]
    finally:
        bpy.data.images.remove(image)


def render_camera(scene, path: Path, longest: int = 512, samples: int = 16, transparent: bool = True,
                  depth_folder: Path | None = None) -> tuple[int, int]:
    """Render the active camera into `path` (PNG, 8 bit; RGBA with a transparent film, else RGB)
    at the scene's aspect, the longer side at most `longest` px, with the scene's engine and at
    most `samples` samples; with `depth_folder`, its Z pass into that folder too (_depth_pass).
    Returns the image's (width, height)."""
    r = scene.render
    width, height = cameras.capture_size(r.resolution_x, r.resolution_y, r.resolution_percentage,
                                         r.pixel_aspect_x, r.pixel_aspect_y, longest)
    groups = [(r, {"film_transparent": transparent, "resolution_x": width, "resolution_y": height,
                   "resolution_percentage": 100, "pixel_aspect_x": 1.0, "pixel_aspect_y": 1.0,
                   "use_border": False, "use_stamp": False, "use_multiview": False,
                   "use_compositing": depth_folder is not None, "use_sequencer": False, "filepath": str(path)}),
              (r.image_settings, {"media_type": "IMAGE", "file_format": "PNG",
                                  "color_mode": "RGBA" if transparent else "RGB", "color_depth": "8"})]
    for engine, name in ((getattr(scene, "cycles", None), "samples"),
                         (getattr(scene, "eevee", None), "taa_render_samples")):
        if engine is not None:
            groups.append((engine, {name: min(getattr(engine, name), samples)}))
    groups += [(obj, {"hide_render": True}) for obj in _view_planes()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with _changed(*groups), _depth_pass(scene, depth_folder) if depth_folder is not None else nullcontext():
        bpy.ops.render.render(write_still=True, scene=scene.name)
    if not path.is_file():
        raise CaptureError(f"Rendering the camera wrote no image at {path}. Check that the scene renders with F12.")
    return width, height


def render_with_depth(scene, path: Path, longest: int = 512, samples: int = 16) -> tuple[int, int]:
    """A scene walk's start frame: the active camera rendered opaque into `path` (PNG, RGB 8
    bit) and its view depth into walks.depth_path(path) (16-bit grey PNG, millimetres, 0 where
    the world shows). Returns the image's (width, height)."""
    camera = active_camera(scene)
    if not hasattr(scene, "compositing_node_group"):   # Blender 4.x: scene.node_tree, another File Output API
        raise CaptureError("Starting a walk from the scene's render needs Blender 5.0 or later (its compositor "
                           "writes the depth). Update Blender, or set Start to Prompt Only.")
    folder = Path(tempfile.mkdtemp(prefix="dreamsculpt-depth-"))
    try:
        width, height = render_camera(scene, path, longest, samples, transparent=False, depth_folder=folder)
        z = _read_depth(folder, width, height)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    millimetres = walks.depth_millimetres(z, camera.data.clip_end)
    walks.depth_path(path).write_bytes(walks.png_grey16(millimetres, width, height, bottom_up=True))
    return width, height


def capture(scene, path: Path, longest: int = 512, samples: int = 16) -> tuple[cameras.CameraSpec, float | None]:
    """Render the active camera into `path`; returns its CameraSpec and the depth of the visible
    objects in its view (None when it sees none)."""
    camera = active_camera(scene)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    spec = camera_spec(camera)
    depth = cameras.depth(spec.location, visible_corners(scene, camera, depsgraph))
    render_camera(scene, path, longest, samples)
    return spec, depth


def job_image(context, s) -> JobImage:
    """The picture the settings `s` point at: the active camera, rendered into the add-on's
    captures folder (kept for Run Again), or the picked file once it reads as an image."""
    if s.image_source == "CAMERA":
        camera = active_camera(context.scene)
        name = bpy.path.clean_name(camera.name)
        path = user_folder("captures") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.png"
        spec, depth = capture(context.scene, path, s.capture_size, s.capture_samples)
        return JobImage(str(path), camera.name, spec.to_json(), depth)
    if not s.image_path.strip():
        raise BackendError("No image file is picked: choose one in the Image field, or use the active camera.")
    path = Path(bpy.path.abspath(s.image_path))
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as exc:
        raise BackendError(f"The image file {path} cannot be read ({exc.strerror}). Pick another one.") from None
    if image_type(head) is None:
        raise BackendError(f"{path.name} is not a PNG, JPEG or WebP image. Pick an image file (with alpha, or on "
                           "a plain background), or use the active camera.")
    return JobImage(str(path), path.name)
