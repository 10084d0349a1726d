"""What a job asks for: the POST /jobs body of every kind, made from the panel's settings, and
the settings put back from a body (Run Again, Edit Prompt). No `bpy`: `s` is any object with
the attributes of properties.DreamsculptSettings (a SimpleNamespace in the tests).

The body mirrors the backend's request models (dreamsculpt.requests) part for part: `_run`
is _Run, `_optimised` is _Optimised (with MeshOptions), `_from_image` is _FromImage (with
CameraSpec), and each kind adds its own fields; a scene walk (SceneWalkRequest) is _Run and
its own fields, its cameras taken from the scene (a WalkPath). A setting at 0 (steps, guidance scale, mesh
resolution, threshold, face budget, texture size, size) is left out, so the backend's default
applies; the mesh's origin and normal map are always sent. Refinement, where 0 steps means off,
has its own choice: Preset leaves `refine` out, Off sends 0, Custom its steps. The owner (a
preference, not a scene setting) is sent when there is one.
tests/test_addon_requests.py validates every kind's body against its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("text_to_3d", "image_to_3d", "novel_views", "scene_walk")
IMAGE_KINDS = ("image_to_3d", "novel_views")

#: Fields of each request model the panel never sets (the backend's defaults apply), so that
#: with the fields the builder emits they name every field of the model. "image" is the
#: uploaded picture's id, added on the job's thread (jobs.upload_and_submit); "name" names a
#: batch job's folder (`dreamsculpt batch`), and the backend names the add-on's jobs itself.
BACKEND_DEFAULTS = {
    "text_to_3d": frozenset({"fp16", "name", "resolution", "background"}),
    "image_to_3d": frozenset({"fp16", "name", "resolution", "variant", "text_model", "image", "background"}),
    "novel_views": frozenset({"fp16", "name", "variant", "views", "neighbours", "image"}),
    # "image" and "depth_image" (the start render and its depth) are added on the job's thread.
    "scene_walk": frozenset({"fp16", "name", "candidates", "max_faces", "image", "depth_image"}),
}
#: Text to 3D: the setting holding each model prior's model.
MODEL_SETTINGS = {"sd": "model", "mvdream": "mvdream_model", "if": "if_model"}
#: The priors with view prompts, where Perp-Neg applies (requests.PERP_NEG_PRIORS).
PERP_NEG_PRIORS = ("sd", "if")
#: MeshOptions' fields the panel never sets: the add-on imports result.ply, so no OBJ.
MESH_DEFAULTS = frozenset({"obj"})


def _same(path: str) -> str:
    return path


@dataclass
class JobImage:
    """The picture of an image job: the file sent, what it came from, and how it was seen."""

    path: str                       # the capture, or the picked file (absolute)
    source: str                     # the camera's name, or the file's
    camera: dict | None = None      # a capture: the camera's CameraSpec (JSON); None: a picked file
    depth: float | None = None      # a capture: camera to visible objects, world units (None: unknown)
    depth_path: str = ""            # a scene walk's start render: its view depth (16-bit PNG, mm); "" none


@dataclass
class WalkPath:
    """A scene walk's cameras, read from the scene: a path (`cameras`, one CameraSpec JSON per
    path frame, the first the start view) or a preset move's start camera (`camera`); the
    frames' aspect (width / height, the render's); the camera they came from; and where the
    path lies on the timeline (path camera k at frame_start + k * frame_step)."""

    cameras: list[dict] | None = None
    camera: dict | None = None
    aspect: float = 1.0
    source: str = ""                # the camera object's name
    frame_start: int = 1
    frame_step: int = 1


def job_body(s, image: JobImage | None = None, abspath: Callable[[str], str] = _same,
             walk: WalkPath | None = None, owner: str = "") -> dict:
    """The POST /jobs body of the settings' mode (`s.mode`), without "image" (the upload's id,
    added when the image has been sent). An image kind needs `image`, a scene walk its `walk`
    (and `image` when it starts from a render); `abspath` turns a Blender path ("//refs") into
    the absolute path the backend reads; `owner` is who sends it (the Owner preference)."""
    if s.mode not in KINDS:
        raise ValueError(f"unknown mode {s.mode!r}; expected one of {', '.join(KINDS)}")
    body = _run(s, owner)
    if s.mode == "text_to_3d":
        body.update(_text(s, abspath), **_optimised(s))
    elif s.mode == "scene_walk":
        if walk is None:
            raise ValueError("a scene_walk job needs its camera path (a WalkPath)")
        body.update(_scene_walk(s, walk, abspath))
    elif image is None:
        raise ValueError(f"a {s.mode} job needs its image (a capture or a picked file)")
    elif s.mode == "image_to_3d":
        body.update(_from_image(s, image), **_optimised(s), **_image_to_3d(s))
    else:
        body.update(_from_image(s, image), **_novel_views(s))
    return body


def _run(s, owner: str) -> dict:
    """_Run: what every kind has."""
    body = {"kind": s.mode, "seed": s.seed}
    if s.guidance_scale:
        body["guidance_scale"] = s.guidance_scale
    if owner.strip():
        body["owner"] = owner.strip()
    return body


def _optimised(s) -> dict:
    """_Optimised: the kinds that optimise a field and mesh it (MeshOptions under "mesh")."""
    body = {"preset": s.preset}
    if s.steps:
        body["steps"] = s.steps
    if s.refine_mode == "OFF":
        body["refine"] = 0
    elif s.refine_mode == "CUSTOM":
        body["refine"] = s.refine_steps
    body["mesh"] = {}
    if s.mesh_resolution:
        body["mesh"]["resolution"] = s.mesh_resolution
    if s.threshold:
        body["mesh"]["threshold"] = s.threshold
    for key in ("max_faces", "texture_size", "size"):
        if getattr(s, key):
            body["mesh"][key] = getattr(s, key)
    body["mesh"].update(normal_map=s.normal_map, origin=s.origin)
    return body


def _text(s, abspath: Callable[[str], str]) -> dict:
    """TextTo3DRequest's own fields: the prior, its model (each model prior has its own
    setting), the score and time schedule, and Perp-Neg where the prior has view prompts."""
    body = {"prompt": s.prompt, "negative": s.negative, "prior": s.prior, "score": s.score,
            "t_schedule": s.t_schedule}
    if s.prior in MODEL_SETTINGS:
        body["model"] = getattr(s, MODEL_SETTINGS[s.prior])
    if s.prior in PERP_NEG_PRIORS:
        body["perp_neg"] = s.perp_neg
    if s.prior == "references":
        body["references"] = abspath(s.references)
    return body


def _from_image(s, image: JobImage) -> dict:
    """_FromImage: the prior, and the camera of a capture or the view a picked file was taken from."""
    body = {"prior": s.image_prior}
    if s.image_prior == "zero123":
        body["model"] = s.zero123_model
    if image.camera is not None:
        body["camera"] = image.camera
        if image.depth:
            body["depth"] = image.depth
    else:
        body["elevation_deg"], body["azimuth_deg"], body["fov_deg"] = s.elevation, s.azimuth, s.fov
    return body


def _image_to_3d(s) -> dict:
    """ImageTo3DRequest's own fields: text guidance next to the image's."""
    body = {}
    if s.image_prompt.strip():
        body["prompt"] = s.image_prompt
    if s.text_weight:
        body["text_weight"] = s.text_weight
    return body


def _novel_views(s) -> dict:
    """NovelViewsRequest's own fields (its steps are denoising steps per view)."""
    body = {"count": s.view_count, "autoregressive": s.autoregressive}
    if s.steps:
        body["steps"] = s.steps
    return body


def _scene_walk(s, walk: WalkPath, abspath: Callable[[str], str]) -> dict:
    """SceneWalkRequest's own fields: the prompt and prior, the path (or preset move), the
    frames' size. Its steps are denoising steps per frame."""
    body = {"prompt": s.prompt, "prior": s.prior}
    if s.prior == "sd":
        body["model"], body["depth_model"] = s.inpaint_model, s.depth_model
    if s.prior == "references":
        body["references"] = abspath(s.references)
    if walk.cameras is not None:
        body["cameras"] = walk.cameras
    else:
        body.update(camera=walk.camera, motion=s.walk_motion, frames=s.walk_frames)
        if s.walk_step:
            body["step"] = s.walk_step
    body["resolution"], body["aspect"] = s.walk_resolution, walk.aspect
    if s.steps:
        body["steps"] = s.steps
    return body


def walk_of(body: dict, frame_start: int = 1, frame_step: int = 1, source: str = "") -> WalkPath:
    """A scene walk body's path again (Run Again sends the recorded cameras, not the scene's
    animation as it is now)."""
    return WalkPath(body.get("cameras"), body.get("camera"), body.get("aspect", 1.0), source, frame_start, frame_step)


def prompt_to_settings(body: dict, s) -> None:
    """Edit Prompt: a body's prompt (and negative prompt) and seed back into the settings."""
    s.seed = body.get("seed", s.seed)
    kind = body.get("kind", "text_to_3d")
    if kind == "text_to_3d":
        s.prompt, s.negative = body.get("prompt", ""), body.get("negative", "")
    elif kind == "scene_walk":
        s.prompt = body.get("prompt", "")
    else:
        s.image_prompt = body.get("prompt", "")


def to_settings(body: dict, s) -> None:
    """Run Again: put back every setting the body was made from, so that job_body(s, the same
    image) makes the same body; settings the kind does not use are left alone. The image
    itself (path, camera) stays with the history entry: only its source and a file's view
    are settings."""
    prompt_to_settings(body, s)
    s.mode = kind = body.get("kind", "text_to_3d")
    s.guidance_scale, s.steps = body.get("guidance_scale", 0.0), body.get("steps", 0)
    if kind == "scene_walk":
        _walk_to_settings(body, s)
        return
    if kind != "novel_views":
        mesh = body.get("mesh", {})
        s.mesh_resolution, s.threshold = mesh.get("resolution", 0), mesh.get("threshold", 0.0)
        s.max_faces, s.texture_size = mesh.get("max_faces", 0), mesh.get("texture_size", 0)
        s.size = mesh.get("size", 0.0)
        s.normal_map, s.origin = mesh.get("normal_map", False), mesh.get("origin", "center")
        s.preset = body.get("preset") or s.preset
        refine = body.get("refine")
        s.refine_mode = "PRESET" if refine is None else "OFF" if refine == 0 else "CUSTOM"
        if refine:
            s.refine_steps = refine
    if kind == "text_to_3d":
        s.prior = body.get("prior", s.prior)
        if s.prior in MODEL_SETTINGS and body.get("model"):
            setattr(s, MODEL_SETTINGS[s.prior], body["model"])
        s.references = body.get("references") or s.references
        s.score, s.t_schedule = body.get("score", "sds"), body.get("t_schedule", "random")
        s.perp_neg = body.get("perp_neg", False)
        return
    s.image_prior = body.get("prior", s.image_prior)
    s.zero123_model = body.get("model") or s.zero123_model
    if "camera" in body:
        s.image_source = "CAMERA"
    else:
        s.image_source = "FILE"
        s.elevation, s.azimuth = body.get("elevation_deg", s.elevation), body.get("azimuth_deg", s.azimuth)
        s.fov = body.get("fov_deg", s.fov)
    if kind == "image_to_3d":
        s.text_weight = body.get("text_weight", 0.0)
    else:
        s.view_count, s.autoregressive = body.get("count", s.view_count), body.get("autoregressive", False)


def _walk_to_settings(body: dict, s) -> None:
    """A scene walk's own settings. Its cameras stay with the body (a path is not a setting);
    whether it started from a render is the history entry's (an image was sent or not)."""
    s.prior = body.get("prior", s.prior)
    s.inpaint_model = body.get("model") or s.inpaint_model
    s.depth_model = body.get("depth_model") or s.depth_model
    s.references = body.get("references") or s.references
    s.walk_resolution = body.get("resolution", s.walk_resolution)
    if "cameras" in body:
        s.walk_path = "ANIMATION"
    else:
        s.walk_path = "PRESET"
        s.walk_motion, s.walk_frames = body.get("motion", s.walk_motion), body.get("frames", s.walk_frames)
        s.walk_step = body.get("step", 0.0)
