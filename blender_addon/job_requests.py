"""What a job asks for: the POST /jobs body of each mode from the panel's settings, and the
image of an image job (the active camera's capture, or a picked file, checked first)."""

from __future__ import annotations

import time
from pathlib import Path

import bpy

from . import capture
from .client import BackendError, image_type
from .preferences import user_folder


def request_body(s) -> dict:
    """The POST /jobs body of a text job for the panel's settings."""
    body = {"kind": "text_to_3d", "prompt": s.prompt, "negative": s.negative, "prior": s.prior,
            "seed": s.seed, "preset": s.preset}
    if s.prior == "sd":
        body["model"] = s.model
    if s.prior == "references":
        body["references"] = bpy.path.abspath(s.references)
    if s.steps:
        body["steps"] = s.steps
    if s.guidance_scale:
        body["guidance_scale"] = s.guidance_scale
    _mesh_options(s, body)
    return body


def _mesh_options(s, body: dict) -> None:
    body["mesh"] = {}
    if s.mesh_resolution:
        body["mesh"]["resolution"] = s.mesh_resolution
    if s.threshold:
        body["mesh"]["threshold"] = s.threshold


def image_request_body(s, camera: dict | None, depth: float | None) -> dict:
    """The POST /jobs body of an image job (without "image", the uploaded sha): the camera
    that took the picture (CameraSpec and depth), or, for a file, the view it was taken from."""
    body = {"kind": s.mode, "prior": s.image_prior, "seed": s.seed}
    if s.image_prior == "zero123":
        body["model"] = s.zero123_model
    if camera is not None:
        body["camera"] = camera
        if depth:
            body["depth"] = depth
    else:
        body["elevation_deg"], body["azimuth_deg"], body["fov_deg"] = s.elevation, s.azimuth, s.fov
    if s.guidance_scale:
        body["guidance_scale"] = s.guidance_scale
    if s.mode == "image_to_3d":
        body["preset"] = s.preset
        if s.steps:
            body["steps"] = s.steps
        if s.image_prompt.strip():
            body["prompt"] = s.image_prompt
        if s.text_weight:
            body["text_weight"] = s.text_weight
        _mesh_options(s, body)
    else:
        body["count"], body["autoregressive"] = s.view_count, s.autoregressive
        if s.steps:
            body["steps"] = s.steps   # denoising steps per view
    return body


def prepare_image(context, s) -> tuple[str, str, dict | None, float | None]:
    """The image of an image job: (path, source name, CameraSpec dict or None, depth or None).
    The active camera is rendered into the add-on's captures folder (kept for Run Again)."""
    if s.image_source == "CAMERA":
        camera = capture.active_camera(context.scene)
        name = bpy.path.clean_name(camera.name)
        path = user_folder("captures") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.png"
        spec, depth = capture.capture(context.scene, path, s.capture_size, s.capture_samples)
        return str(path), camera.name, spec.to_json(), depth
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
    return str(path), path.name, None, None
