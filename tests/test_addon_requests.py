"""One contract per kind: the body the add-on's builder (blender_addon/job_requests.py) makes
from the panel's settings is one the backend's request model accepts, for every kind the
history can hold, and Run Again's settings make the same body again. No bpy, no server."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from addon_modules import load as _load

# The backend's request models: the contract the CLI and the job server validate with.
from dreamsculpt.requests import (
    CameraSpec,
    ImageTo3DRequest,
    MeshOptions,
    NovelViewsRequest,
    SceneWalkRequest,
    TextTo3DRequest,
)

MODELS = {"text_to_3d": TextTo3DRequest, "image_to_3d": ImageTo3DRequest, "novel_views": NovelViewsRequest,
          "scene_walk": SceneWalkRequest}
#: What POST /images returns and jobs.upload_and_submit adds to an image job's body (and, for a
#: scene walk's start render, what POST /images?depth=true returns for its depth).
IMAGE_ID, DEPTH_ID = "ab" * 32, "cd" * 32

job_requests, cameras = _load("job_requests"), _load("cameras")


def panel(**changes) -> SimpleNamespace:
    """The panel's settings as a fresh scene has them (properties.DreamsculptSettings' defaults)."""
    defaults = {"mode": "text_to_3d", "prompt": "a red cube", "negative": "", "prior": "builtin",
                "model": "stabilityai/stable-diffusion-2-1-base", "mvdream_model": "MVDream/MVDream",
                "if_model": "DeepFloyd/IF-I-XL-v1.0", "score": "sds", "t_schedule": "random", "perp_neg": False,
                "references": "", "seed": 0, "preset": "standard",
                "steps": 0, "guidance_scale": 0.0, "mesh_resolution": 0, "threshold": 0.0, "image_source": "CAMERA",
                "image_path": "", "image_prior": "zero123", "zero123_model": "ashawkey/zero123-xl-diffusers",
                "view_count": 8, "autoregressive": False, "view_planes": False, "image_prompt": "",
                "text_weight": 0.0, "elevation": 0.0, "azimuth": -90.0, "fov": 40.0, "size": 0.0, "origin": "center",
                "texture_size": 0, "normal_map": False, "max_faces": 0, "refine_mode": "PRESET", "refine_steps": 1000,
                "walk_path": "ANIMATION", "walk_every": 1, "walk_motion": "forward", "walk_frames": 20,
                "walk_step": 0.0, "walk_start": "RENDER", "walk_resolution": 512,
                "inpaint_model": "stabilityai/stable-diffusion-2-inpainting",
                "depth_model": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"}
    return SimpleNamespace(**{**defaults, **changes})


def captured() -> job_requests.JobImage:
    """A capture through an oblique camera (a proper rotation: the backend checks it)."""
    matrix = [[0.8, -0.36, 0.48, 6.0], [0.6, 0.48, -0.64, -5.0], [0.0, 0.8, 0.6, 4.0], [0.0, 0.0, 0.0, 1.0]]
    spec = cameras.CameraSpec(matrix, lens=35.0, sensor_fit="VERTICAL", shift_x=0.08)
    return job_requests.JobImage("/captures/cube.png", "Camera", spec.to_json(), 7.7)


PICKED = job_requests.JobImage("/pictures/cup.png", "cup.png")
#: (settings, image) of typical panel uses, every kind, each optional setting on and off.
CASES = [
    (panel(), None),
    (panel(prior="sd", negative="blurry", steps=300, guidance_scale=50.0, mesh_resolution=96, threshold=2.5), None),
    (panel(prior="references", prompt="", references="//refs", preset="high"), None),
    (panel(mode="image_to_3d"), captured()),
    (panel(mode="image_to_3d", image_prior="builtin", preset="preview", steps=250, mesh_resolution=64), captured()),
    (panel(mode="image_to_3d", image_source="FILE", elevation=15.0, azimuth=30.0, fov=50.0, image_prompt="a cup",
           text_weight=0.5, guidance_scale=3.0, threshold=1.0), PICKED),
    (panel(mode="image_to_3d", image_prompt="   "), job_requests.JobImage("/c.png", "Camera", captured().camera)),
    (panel(mode="novel_views"), captured()),
    (panel(mode="novel_views", image_prior="builtin", view_count=4, steps=20, autoregressive=True,
           guidance_scale=2.0, image_source="FILE"), PICKED),
    # The asset options (real-world size, origin, texture, face budget).
    (panel(size=0.25, origin="bottom", texture_size=4096, normal_map=True, max_faces=20_000), None),
    (panel(mode="image_to_3d", size=2.0, origin="bottom", normal_map=True), captured()),
    # Mesh refinement: off (even on High), or a number of steps; novel views have none to send.
    (panel(preset="high", refine_mode="OFF"), None),
    (panel(refine_mode="CUSTOM", refine_steps=2500), None),
    (panel(mode="image_to_3d", refine_mode="CUSTOM", refine_steps=300), captured()),
    (panel(mode="novel_views", refine_mode="CUSTOM", refine_steps=300), captured()),
    (panel(prior="sd", perp_neg=True, score="sjc", t_schedule="dreamtime"), None),
    (panel(prior="mvdream", mvdream_model="/models/mvdream", t_schedule="anneal"), None),
    (panel(prior="if", perp_neg=True, negative="blurry"), None),
]


def walk_path(count: int = 6) -> job_requests.WalkPath:
    """A camera animated along a path (every 2nd frame from 1): moving along +X, turning right."""
    specs = []
    for k in range(count):
        c, s = math.cos(math.radians(-3 * k)), math.sin(math.radians(-3 * k))
        # looking along +X turned by -3k degrees about Z: right = (s, -c, 0), up = Z, back = (-c, -s, 0)
        matrix = [[s, 0.0, -c, 0.12 * k], [-c, 0.0, -s, -1.5], [0.0, 1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]
        specs.append(cameras.CameraSpec(matrix, lens=24.0).to_json())
    return job_requests.WalkPath(cameras=specs, aspect=4 / 3, source="Camera", frame_start=1, frame_step=2)


def preset_move() -> job_requests.WalkPath:
    return job_requests.WalkPath(camera=captured().camera, aspect=16 / 9, source="Camera")


#: A scene walk's start render: the render and its depth beside it.
RENDER = job_requests.JobImage("/captures/walk.png", "Camera", depth_path="/captures/walk-depth.png")
#: (settings, start render or None, path) of scene walks.
WALK_CASES = [
    (panel(mode="scene_walk"), RENDER, walk_path()),
    (panel(mode="scene_walk", walk_start="PROMPT", prior="sd", steps=25, guidance_scale=6.0, walk_resolution=256,
           inpaint_model="/models/inpaint", depth_model="/models/depth"), None, walk_path(2)),
    (panel(mode="scene_walk", walk_path="PRESET", walk_motion="orbit", walk_frames=12, walk_step=4.0), RENDER,
     preset_move()),
    (panel(mode="scene_walk", walk_path="PRESET", walk_motion="backward", walk_start="PROMPT", prior="references",
           references="//rgbd", seed=7), None, preset_move()),
]


def _abspath(path: str) -> str:
    """bpy.path.abspath next to /project/scene.blend: "//" is the .blend's folder."""
    return "/project/" + path[2:] if path.startswith("//") else path


def _sent(body: dict, image: job_requests.JobImage | None = None) -> dict:
    """The body as POST /jobs gets it: an image job's upload id added (a scene walk's, and its
    depth's, when it starts from a render)."""
    if body["kind"] == "scene_walk":
        return body if image is None else {**body, "image": IMAGE_ID, "depth_image": DEPTH_ID}
    return body if body["kind"] == "text_to_3d" else {**body, "image": IMAGE_ID}


def _bodies(kind: str) -> list[dict]:
    """The bodies of every case of `kind`, sent with an Owner preference set."""
    if kind == "scene_walk":
        return [job_requests.job_body(s, image, walk=walk, owner="ada") for s, image, walk in WALK_CASES]
    return [job_requests.job_body(s, image, owner="ada") for s, image in CASES if s.mode == kind]


@pytest.mark.parametrize("settings,image", CASES)
def test_every_kind_of_body_validates_against_the_backend_model(settings, image):
    body = job_requests.job_body(settings, image, _abspath)
    model = MODELS[settings.mode]
    request = model.model_validate(_sent(body))
    assert set(body) <= set(model.model_fields)
    assert set(body.get("mesh", {})) <= set(MeshOptions.model_fields)
    assert request.kind == settings.mode and request.seed == settings.seed
    if settings.mode == "text_to_3d" and settings.prior == "references":
        assert request.references == "/project/refs"          # the Blender path made absolute
    if image is not None and image.camera is not None:
        assert request.camera == CameraSpec.model_validate(image.camera) and request.depth == image.depth
    elif image is not None:
        assert request.camera is None and request.azimuth_deg == settings.azimuth


def test_the_keys_each_kind_can_send_are_its_models_fields():
    """Every key the builder can emit is a field of the model; with the fields the panel leaves
    to the backend (BACKEND_DEFAULTS) they name every field, so a new backend field fails here
    until the add-on decides about it."""
    for kind, model in MODELS.items():
        emitted = set().union(*_bodies(kind))
        fields = set(model.model_fields)
        assert emitted <= fields, f"{kind}: {sorted(emitted - fields)} are not fields of {model.__name__}"
        assert emitted | job_requests.BACKEND_DEFAULTS[kind] == fields, f"{kind}: {sorted(fields - emitted)}"


@pytest.mark.parametrize("settings,image", CASES[:1] + CASES[3:4] + CASES[7:8])
def test_the_owner_is_sent_when_set_and_run_again_keeps_the_body(settings, image):
    """The Owner preference (not a scene setting) goes into every kind's body when it is not
    blank; Run Again with the same preference makes the same body."""
    assert "owner" not in job_requests.job_body(settings, image, owner="")
    assert "owner" not in job_requests.job_body(settings, image, owner="   ")
    body = job_requests.job_body(settings, image, owner=" Ada Lovelace ")
    assert MODELS[settings.mode].model_validate(_sent(body)).owner == "Ada Lovelace"
    editor = panel(mode="scene_walk", seed=99)
    job_requests.to_settings(body, editor)
    assert job_requests.job_body(editor, image, owner="Ada Lovelace") == body


def test_the_mesh_options_the_panel_can_send_are_meshoptions_fields():
    """With MESH_DEFAULTS (what the panel leaves to the backend) they name every field, so a
    new MeshOptions field fails here until the add-on decides about it."""
    emitted = set().union(*(job_requests.job_body(s, image).get("mesh", {}) for s, image in CASES))
    assert emitted | job_requests.MESH_DEFAULTS == set(MeshOptions.model_fields)


def test_asset_options_size_zero_is_left_out_and_the_rest_reach_the_request():
    plain = TextTo3DRequest.model_validate(job_requests.job_body(panel()))
    assert "size" not in job_requests.job_body(panel())["mesh"]
    assert (plain.mesh.size, plain.mesh.origin, plain.mesh.texture_size, plain.mesh.normal_map,
            plain.mesh.max_faces) == (None, "center", None, False, None)
    asked = job_requests.job_body(panel(size=0.25, origin="bottom", texture_size=4096, normal_map=True,
                                        max_faces=20_000))
    mesh = TextTo3DRequest.model_validate(asked).mesh
    assert (mesh.size, mesh.origin, mesh.texture_size, mesh.normal_map, mesh.max_faces) == (0.25, "bottom", 4096,
                                                                                             True, 20_000)


def test_refine_is_the_presets_off_or_the_steps():
    """Refine Mesh: Preset sends nothing (High refines, the others do not), Off sends 0 even on
    High, Custom its steps; novel views make no mesh and send none."""
    for preset, steps in (("preview", 0), ("standard", 0), ("high", 1000)):
        body = job_requests.job_body(panel(preset=preset))
        assert "refine" not in body
        assert TextTo3DRequest.model_validate(body).to_config().refine.steps == steps, preset
    off = TextTo3DRequest.model_validate(job_requests.job_body(panel(preset="high", refine_mode="OFF")))
    assert off.refine == 0 and off.to_config().refine.steps == 0
    custom = job_requests.job_body(panel(mode="image_to_3d", refine_mode="CUSTOM", refine_steps=300), captured())
    assert ImageTo3DRequest.model_validate(_sent(custom)).refine == 300
    views = job_requests.job_body(panel(mode="novel_views", refine_mode="CUSTOM", refine_steps=300), captured())
    assert "refine" not in views


@pytest.mark.parametrize("settings,image", CASES)
def test_run_again_puts_back_the_settings_that_make_the_same_body(settings, image):
    body = job_requests.job_body(settings, image, _abspath)
    editor = panel(mode="text_to_3d" if settings.mode != "text_to_3d" else "novel_views", steps=7, seed=99,
                   guidance_scale=9.0, prompt="something else", image_prompt="other", image_source="CAMERA",
                   size=3.0, origin="bottom" if settings.origin == "center" else "center", texture_size=128,
                   normal_map=not settings.normal_map, max_faces=99,
                   refine_mode="OFF" if settings.refine_mode == "CUSTOM" else "CUSTOM", refine_steps=7)
    job_requests.to_settings(body, editor)
    assert editor.mode == settings.mode and editor.seed == settings.seed
    assert job_requests.job_body(editor, image, _abspath) == body
    assert editor.image_source == ("CAMERA" if image is None or image.camera is not None else "FILE")


@pytest.mark.parametrize("settings,image,walk", WALK_CASES)
def test_a_scene_walk_body_validates_with_a_path_and_with_a_preset_move(settings, image, walk):
    body = job_requests.job_body(settings, image, _abspath, walk)
    request = SceneWalkRequest.model_validate(_sent(body, image))
    assert set(body) <= set(SceneWalkRequest.model_fields)
    assert request.kind == "scene_walk" and request.prompt == settings.prompt and request.prior == settings.prior
    assert request.resolution == settings.walk_resolution and request.aspect == pytest.approx(walk.aspect)
    if walk.cameras is not None:                             # the animation, every camera as read
        assert request.camera is None and request.motion is None
        assert [c.model_dump() for c in request.cameras] == [CameraSpec.model_validate(c).model_dump()
                                                             for c in walk.cameras]
        assert request.frame_count() == len(walk.cameras)
    else:                                                    # a preset move from the camera
        assert request.cameras is None and request.camera == CameraSpec.model_validate(walk.camera)
        assert (request.motion, request.frames) == (settings.walk_motion, settings.walk_frames)
        assert request.step == (settings.walk_step or None)
    assert (request.image, request.depth_image) == ((IMAGE_ID, DEPTH_ID) if image else (None, None))
    if settings.prior == "sd":
        assert (request.model, request.depth_model) == ("/models/inpaint", "/models/depth")
        assert (request.steps, request.guidance_scale) == (25, 6.0)
    if settings.prior == "references":
        assert request.references == "/project/rgbd"


@pytest.mark.parametrize("settings,image,walk", WALK_CASES)
def test_run_again_puts_back_a_scene_walks_settings(settings, image, walk):
    """The editor, set for another kind and other walk settings, makes the same body again
    from the recorded body and its path (job_requests.walk_of); the path is the body's, not a
    setting."""
    body = job_requests.job_body(settings, image, _abspath, walk)
    editor = panel(mode="novel_views", seed=99, steps=7, guidance_scale=9.0, prompt="something else", prior="sd",
                   negative="keep me", walk_path="PRESET" if walk.cameras is not None else "ANIMATION",
                   walk_motion="pan", walk_frames=3, walk_step=1.0, walk_resolution=1024, inpaint_model="x",
                   depth_model="y")
    job_requests.to_settings(body, editor)
    again = job_requests.walk_of(body, walk.frame_start, walk.frame_step, walk.source)
    assert editor.mode == "scene_walk" and editor.seed == settings.seed and editor.negative == "keep me"
    assert editor.walk_path == settings.walk_path
    assert job_requests.job_body(editor, image, _abspath, again) == body
    assert again == walk


def test_a_scene_walk_needs_its_path():
    with pytest.raises(ValueError, match="camera path"):
        job_requests.job_body(panel(mode="scene_walk"), RENDER)


def test_edit_prompt_copies_only_the_prompt_and_seed():
    editor = panel(prompt="old", negative="old", seed=1, steps=5, prior="sd")
    job_requests.prompt_to_settings(job_requests.job_body(panel(prompt="a cup", negative="blurry", seed=4)), editor)
    assert (editor.prompt, editor.negative, editor.seed, editor.steps, editor.prior) == ("a cup", "blurry", 4, 5, "sd")
    job_requests.prompt_to_settings(job_requests.job_body(*CASES[5]), editor)
    assert (editor.image_prompt, editor.prompt) == ("a cup", "a cup")


def test_a_body_needs_a_known_mode_and_an_image_kind_its_image():
    with pytest.raises(ValueError, match="needs its image"):
        job_requests.job_body(panel(mode="novel_views"))
    with pytest.raises(ValueError, match="unknown mode"):
        job_requests.job_body(panel(mode="text_to_video"))
