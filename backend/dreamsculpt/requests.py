"""What a user asks for, one pydantic model per kind: the one contract the CLI, the job server
and the Blender add-on share. The server validates POST /jobs with these models, the CLI builds
every command's request with them (so both accept the same values), and the add-on's body
builder mirrors them field for field. `to_config` turns a request into the engine's RunConfig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config import (
    BACKGROUNDS,
    DEFAULT_DEPTH_MODEL,
    DEFAULT_INPAINT_MODEL,
    DEFAULT_MODELS,
    DEFAULT_SD_MODEL,
    DEFAULT_ZERO123_MODEL,
    IMAGE_PRIORS,
    LIMITS,
    MOTIONS,
    ORIGINS,
    PRESETS,
    PRIORS,
    SCORES,
    T_SCHEDULES,
    WALK_PRIORS,
    ZERO123_VARIANTS,
    RunConfig,
    build_config,
    build_image_config,
)

#: Uploaded images: the sha256 (hex) of the stored PNG.
IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
#: A job's name: a folder name on every OS (no separators, no leading dot, no spaces).
JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
#: The priors whose text has view prompts, the ones Perp-Neg works on.
PERP_NEG_PRIORS = ("sd", "if")


def _no_control_characters(value: str | None) -> str | None:
    if value is not None and any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    return value


def _one_line(value: str) -> str:
    """A prompt: newlines and tabs become spaces; other control characters are refused."""
    return _no_control_characters(value.replace("\n", " ").replace("\t", " "))


#: Free text that ends up in logs and file names: no control characters.
PlainText = Annotated[str, AfterValidator(_no_control_characters)]
#: A model: hub id, diffusers folder or one weights file on the server's disk.
ModelName = Annotated[PlainText, Field(min_length=1, max_length=4096)]
Prompt = Annotated[str, Field(max_length=2000), AfterValidator(_one_line)]
#: A finite matrix entry (Blender scenes are rarely larger than a few kilometres).
_Entry = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Matrix4 = Annotated[list[Annotated[list[_Entry], Field(min_length=4, max_length=4)]],
                    Field(min_length=4, max_length=4)]


class MeshOptions(BaseModel):
    model_config = STRICT

    resolution: int | None = Field(None, ge=LIMITS["mesh_resolution"][0], le=LIMITS["mesh_resolution"][1],
                                   description="Marching-cubes grid size (default: the preset's).")
    threshold: float | None = Field(None, gt=0, le=1e6, description="Density of the surface (default: automatic).")
    max_faces: int | None = Field(None, ge=LIMITS["max_faces"][0], le=LIMITS["max_faces"][1],
                                  description="Face budget: the mesh is decimated to it before it is unwrapped "
                                              "(default: the preset's, 10k / 50k / 100k).")
    texture_size: int | None = Field(None, ge=LIMITS["texture_size"][0], le=LIMITS["texture_size"][1],
                                     description="Base-colour texture, texels per side (default: the preset's, "
                                                 "512 / 1024 / 2048).")
    normal_map: bool = Field(False, description="Also bake a tangent-space normal map from the dense surface.")
    size: float | None = Field(None, gt=0, le=10_000, description="Real-world size: the longest side in metres "
                                                                    "(default: the field's own units, about 1.5).")
    origin: Literal[ORIGINS] = Field("center", description="The object's origin: the centre of its bounding box, "  # type: ignore[valid-type]
                                                           "or the centre of its bottom (it stands on the floor).")
    obj: bool = Field(False, description="Also write result.obj, result.mtl and texture.png.")


class CameraSpec(BaseModel):
    """A Blender perspective camera: the pose and lens the reference image was taken with."""

    model_config = STRICT

    matrix_world: Matrix4 = Field(description="The camera object's matrix_world, row-major (its scale is ignored).")
    lens: float = Field(50.0, gt=0, le=1e5, description="Focal length, mm.")
    sensor_width: float = Field(36.0, gt=0, le=1e5, description="mm.")
    sensor_height: float = Field(24.0, gt=0, le=1e5, description="mm.")
    sensor_fit: Literal["AUTO", "HORIZONTAL", "VERTICAL"] = "AUTO"
    shift_x: float = Field(0.0, ge=-10, le=10, description="Lens shift, in units of the larger image side.")
    shift_y: float = Field(0.0, ge=-10, le=10)

    @field_validator("matrix_world")
    @classmethod
    def _rigid_enough(cls, m: list[list[float]]) -> list[list[float]]:
        if any(abs(a - b) > 1e-6 for a, b in zip(m[3], (0.0, 0.0, 0.0, 1.0))):
            raise ValueError("the last row must be [0, 0, 0, 1] (an affine transform, as Blender's matrix_world is)")
        axes = [[m[r][c] for r in range(3)] for c in range(3)]   # the camera's x, y, z axes (columns)
        norms = [sum(v * v for v in axis) ** 0.5 for axis in axes]
        if min(norms) < 1e-9:
            raise ValueError("the rotation part (upper-left 3x3) has a zero axis: the camera has zero scale")
        (a, b, c), (d, e, f), (g, h, i) = ([v / n for v in axis] for axis, n in zip(axes, norms))
        det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
        if abs(det) < 1e-3:
            raise ValueError("the rotation part (upper-left 3x3) is degenerate: its axes are not independent")
        if det < 0:
            raise ValueError("the camera is mirrored (a negative scale): reset the camera's scale")
        return m


class ViewOffset(BaseModel):
    """A novel view, relative to the reference view."""

    model_config = STRICT

    azimuth_deg: float = Field(ge=-360, le=360, description="Degrees around the object (world Z), from the reference.")
    elevation_deg: float = Field(0.0, ge=-89, le=89, description="Degrees up (+) or down (-) from the reference.")


class _Run(BaseModel):
    """Options every kind of job has."""

    model_config = STRICT

    kind: str   # each request narrows it to its Literal; declared here so that it comes first
    seed: int = Field(0, ge=LIMITS["seed"][0], le=LIMITS["seed"][1])
    guidance_scale: float | None = Field(None, gt=0, le=1000,
                                         description="Classifier-free guidance (default: the prior's).")
    fp16: bool = Field(False, description="Half precision for the diffusion model (CUDA only).")
    name: str | None = Field(None, pattern=JOB_NAME_PATTERN,
                             description="A name for the job: its folder in a batch (`dreamsculpt batch`).")
    owner: PlainText | None = Field(None, max_length=64,
                                    description="Who queued the job (GET /jobs shows it to the team).")

    def _run_options(self, device: str) -> dict:
        return {"seed": self.seed, "guidance_scale": self.guidance_scale, "fp16": self.fp16, "device": device}


class _Optimised(_Run):
    """Options of the kinds that optimise a 3D field and mesh it."""

    preset: Literal[tuple(PRESETS)] = "standard"  # type: ignore[valid-type]
    steps: int | None = Field(None, ge=LIMITS["steps"][0], le=LIMITS["steps"][1],
                              description="Optimisation steps (default: the preset's).")
    refine: int | None = Field(None, ge=LIMITS["refine"][0], le=LIMITS["refine"][1],
                               description="Mesh refinement steps after the field (Magic3D's fine stage; "
                                           "0: off; default: the preset's, on for high only).")
    resolution: int | None = Field(None, ge=LIMITS["resolution"][0], le=LIMITS["resolution"][1],
                                   description="Render size during optimisation (default: the preset's).")
    mesh: MeshOptions = Field(default_factory=MeshOptions)
    background: Literal[BACKGROUNDS] = Field(  # type: ignore[valid-type]
        "auto", description="What renders are composited over in training. auto: random solid colours "
                            "where the prior knows its images' outlines (reference sets, builtin), learned "
                            "for sd, else white.")

    def _optimise_options(self) -> dict:
        m = self.mesh
        return {"preset": self.preset, "steps": self.steps, "refine": self.refine, "resolution": self.resolution,
                "mesh_resolution": m.resolution, "threshold": m.threshold, "max_faces": m.max_faces,
                "texture_size": m.texture_size, "normal_map": m.normal_map, "size": m.size, "origin": m.origin,
                "obj": m.obj}


class TextTo3DRequest(_Optimised):
    """A text (or reference set) to coloured mesh job: the options of `dreamsculpt generate`."""

    kind: Literal["text_to_3d"]
    prior: Literal[PRIORS] = Field("sd", description="sd: Stable Diffusion; mvdream: MVDream (four views at "  # type: ignore[valid-type]
                                                     "once, the cure for faces on every side); if: DeepFloyd IF "
                                                     "stage I (64 px); builtin: offline shapes; references: a "
                                                     "folder of images on the server's disk.")
    prompt: Prompt = Field("", validate_default=True, description='What to make, e.g. "a red cube".')
    negative: PlainText = Field("", max_length=2000, description="Negative prompt (sd, mvdream, if).")
    model: ModelName | None = Field(None, description="Hub id, diffusers folder or weights file of the prior's model "
                                                      "(default: the prior's own: " + ", ".join(
                                                          f"{k} {v}" for k, v in DEFAULT_MODELS.items()) + ").")
    references: PlainText | None = Field(None, min_length=1, max_length=4096, validate_default=True,
                                         description="Folder of square images (+ poses.json) on the server's disk.")
    score: Literal[SCORES] = Field("sds", description="sds: Score Distillation Sampling; sjc: Score Jacobian "  # type: ignore[valid-type]
                                                      "Chaining's perturb-and-average scoring (2 noise draws a "
                                                      "step, unit weight).")
    t_schedule: Literal[T_SCHEDULES] = Field("random", description="Diffusion times: random (uniform), anneal "  # type: ignore[valid-type]
                                                                   "(uniform under a ceiling falling to 0.5), "
                                                                   "dreamtime (one time a step, falling "
                                                                   "monotonically: DreamTime).")
    perp_neg: bool = Field(False, description="Perp-Neg: the other views' prompts as negatives, only their parts "
                                              "perpendicular to the view's own (sd and if: their view prompts).")

    @field_validator("prompt")
    @classmethod
    def _prompt_given(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and info.data.get("prior") != "references":
            raise ValueError('the prompt is empty: say what to make, e.g. "a red cube"')
        return value

    @field_validator("references")
    @classmethod
    def _references_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("prior") == "references" and not value:
            raise ValueError("prior 'references' needs references: a folder of square images on the server's "
                             "disk (--references DIR on the command line)")
        return value

    @field_validator("perp_neg")
    @classmethod
    def _perp_neg_on_view_prompts(cls, value: bool, info: ValidationInfo) -> bool:
        prior = info.data.get("prior")
        if value and prior not in PERP_NEG_PRIORS:
            why = ("mvdream knows each view's camera and has no view prompts" if prior == "mvdream"
                   else f"the {prior} prior has no text model")
            raise ValueError(f"Perp-Neg works on the view prompts of the sd and if priors, and {why}: leave "
                             "Perp-Neg off, or choose prior sd or if")
        return value

    def subject(self) -> str:
        """What the job is about, for logs."""
        return repr(self.prompt)

    def chosen_model(self) -> str | None:
        """The model the job loads: `model`, or the prior's default (None for the closed-form priors)."""
        if self.prior not in DEFAULT_MODELS:
            return None
        return self.model or DEFAULT_MODELS[self.prior]

    def to_config(self, device: str = "auto", image_path: str | Path | None = None) -> RunConfig:
        """The run's configuration (`image_path` is for the image kinds; unused here)."""
        config = build_config(self.prompt, prior=self.prior, negative=self.negative,
                              model=self.chosen_model() or DEFAULT_SD_MODEL, references=self.references,
                              **self._run_options(device), **self._optimise_options(), background=self.background)
        g = config.guidance
        g.score, g.t_schedule, g.perp_neg = self.score, self.t_schedule, self.perp_neg
        return config


class _FromImage(_Run):
    """The reference image of the image kinds, the camera it was taken with, and the prior."""

    image: str = Field(pattern=IMAGE_ID_PATTERN, description="The id (sha256) that POST /images returned.")
    camera: CameraSpec | None = Field(None, description="The Blender camera of the image; null: the orbit "
                                                        "camera of elevation_deg, azimuth_deg and fov_deg.")
    depth: float | None = Field(None, gt=0, le=1e6, description="Camera centre to object centre, world units "
                                                                "(scales the placement; default: a guess).")
    elevation_deg: float = Field(0.0, ge=-89, le=89, description="Without a camera: the view's elevation.")
    azimuth_deg: float = Field(-90.0, ge=-360, le=360, description="Without a camera: the view's azimuth "
                                                                   "(-90: the front, Blender's -Y).")
    fov_deg: float = Field(40.0, gt=1, lt=170, description="Without a camera: the view's field of view.")
    prior: Literal[IMAGE_PRIORS] = Field("zero123", validate_default=True, description="zero123: the Zero-1-to-3 model; builtin: the "
                                                                "offline shapes, view-conditioned.")
    model: ModelName = Field(DEFAULT_ZERO123_MODEL, description="Zero123 model: hub id, diffusers folder or one "
                                                                "file on the server's disk.")
    variant: Literal[ZERO123_VARIANTS] = Field("auto", description="Camera embedding of the model (auto: from "
                                                                   "its name).")

    def subject(self) -> str:
        """What the job is about, for logs."""
        return f"image {self.image[:12]}"

    def _image_options(self, device: str) -> dict:
        return {"prior": self.prior, "camera": self.camera.model_dump() if self.camera else None,
                "depth": self.depth, "elevation_deg": self.elevation_deg, "azimuth_deg": self.azimuth_deg,
                "fov_deg": self.fov_deg, "model": self.model, "variant": self.variant, **self._run_options(device)}


class ImageTo3DRequest(_FromImage, _Optimised):
    """One image (and its camera) to a coloured mesh placed where the camera saw it."""

    kind: Literal["image_to_3d"]
    prompt: Prompt = Field("", description="Optional text for text SDS as well (Magic123-style).")
    text_weight: float = Field(0.0, ge=0, le=100, description="Weight of the text SDS; > 0 needs a prompt.")
    text_model: ModelName = Field(DEFAULT_SD_MODEL, description="Stable Diffusion model of the text SDS.")

    @field_validator("prior")
    @classmethod
    def _white_for_zero123(cls, value: str, info: ValidationInfo) -> str:
        # Zero123 predicts views over white: random colours behind the renders would have it
        # paint the object's see-through parts white (haze), never remove them.
        if value == "zero123" and info.data.get("background") == "random":
            raise ValueError("Zero-1-to-3 sees objects over white, so a random training background would "
                             "teach the field white haze: use background auto or white with this prior")
        return value

    @field_validator("text_weight")
    @classmethod
    def _prompt_for_text(cls, value: float, info: ValidationInfo) -> float:
        if value > 0 and not info.data.get("prompt", "").strip():
            raise ValueError("text_weight > 0 needs a prompt: say what the image shows, or set text_weight to 0")
        return value

    def to_config(self, device: str = "auto", image_path: str | Path = "") -> RunConfig:
        return build_image_config(self.kind, str(image_path), **self._image_options(device),
                                  **self._optimise_options(), prompt=self.prompt, text_weight=self.text_weight,
                                  text_model=self.text_model, background=self.background)


class NovelViewsRequest(_FromImage):
    """Views of the object around the reference view, made by the image prior."""

    kind: Literal["novel_views"]
    count: int = Field(8, ge=LIMITS["view_count"][0], le=LIMITS["view_count"][1],
                       description="A ring of this many views, the reference (view_00) included.")
    views: list[ViewOffset] | None = Field(None, min_length=1, max_length=LIMITS["view_count"][1] - 1,
                                           description="Or these views, relative to the reference "
                                                       "(view_00); overrides count.")
    autoregressive: bool = Field(False, description="Condition each view on the nearest views made so far.")
    neighbours: int = Field(2, ge=1, le=8, description="How many made views condition the next (autoregressive).")
    steps: int | None = Field(None, ge=LIMITS["sample_steps"][0], le=LIMITS["sample_steps"][1],
                              description="Denoising (DDIM) steps per view (default 50).")

    def to_config(self, device: str = "auto", image_path: str | Path = "") -> RunConfig:
        views = [(v.azimuth_deg, v.elevation_deg) for v in self.views] if self.views else None
        return build_image_config(self.kind, str(image_path), **self._image_options(device), view_count=self.count,
                                  views=views, autoregressive=self.autoregressive, neighbours=self.neighbours,
                                  sample_steps=self.steps)




class SceneWalkRequest(_Run):
    """A walk through a scene made as it goes (SceneScape / Text2Room) along a camera path: the
    options of `dreamsculpt scene-walk`."""

    kind: Literal["scene_walk"]
    prior: Literal[WALK_PRIORS] = Field("sd", description="sd: Stable Diffusion inpainting and a depth model; builtin: "  # type: ignore[valid-type]
                                                     "the offline rooms; references: your posed RGB-D frames.")
    prompt: Prompt = Field("", validate_default=True, description='What the scene is, e.g. "a room with a red table".')
    references: PlainText | None = Field(None, min_length=1, max_length=4096, validate_default=True,
                                         description="Folder with frames.json (RGB-D frames and their cameras) "
                                                     "on the server's disk.")
    model: ModelName = Field(DEFAULT_INPAINT_MODEL, description="Inpainting model: hub id, diffusers folder or "
                                                                ".safetensors/.ckpt file (sd prior).")
    depth_model: ModelName = Field(DEFAULT_DEPTH_MODEL, description="Depth model: hub id or transformers folder "
                                                                    "(sd prior).")
    cameras: list[CameraSpec] | None = Field(None, max_length=LIMITS["walk_frames"][1],
                                             description="The path: one Blender camera per frame, the first the "
                                                         "start view.")
    camera: CameraSpec | None = Field(None, description="Or a preset move from this camera (with motion).")
    motion: Literal[MOTIONS] | None = Field(None, description="forward/backward (metres a frame), pan/orbit "  # type: ignore[valid-type]
                                                              "(degrees a frame, to the right).")
    frames: int = Field(20, ge=LIMITS["walk_frames"][0], le=LIMITS["walk_frames"][1],
                        description="Frames of a preset move, the start included.")
    step: float | None = Field(None, gt=0, le=100, description="A preset move's step per frame (default: 0.1 m "
                                                               "or 5 degrees).")
    image: str | None = Field(None, pattern=IMAGE_ID_PATTERN, description="Start frame: the id (sha256) POST "
                                                                          "/images returned; null: made from the "
                                                                          "prompt.")
    depth_image: str | None = Field(None, pattern=IMAGE_ID_PATTERN,
                                    description="The start image's view depth: the id POST /images?depth=true "
                                                "returned for a 16-bit grey PNG in millimetres (it fixes the "
                                                "scene's scale; needs image).")
    resolution: int | None = Field(None, ge=LIMITS["walk_resolution"][0], le=LIMITS["walk_resolution"][1],
                                   description="Frames' longer side, pixels (default: the start image's, else 512 "
                                               "for sd and 256 otherwise).")
    aspect: float | None = Field(None, ge=0.25, le=4.0, description="Frames' width / height (default: the start "
                                                                    "image's, else 1).")
    steps: int | None = Field(None, ge=LIMITS["sample_steps"][0], le=LIMITS["sample_steps"][1],
                              description="Inpainting denoising steps per frame (default 30; sd prior).")
    candidates: int = Field(1, ge=1, le=8, description="Inpaint this many candidates a frame and keep the one "
                                                       "whose seam agrees best (sd prior).")
    max_faces: int = Field(2_000_000, ge=LIMITS["walk_faces"][0], le=LIMITS["walk_faces"][1],
                           description="The scene mesh is decimated to half of this when it grows past it.")

    @field_validator("prompt")
    @classmethod
    def _prompt_given(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and info.data.get("prior") != "references":
            raise ValueError('the prompt is empty: say what the scene is, e.g. "a room with a red table"')
        return value

    @field_validator("references")
    @classmethod
    def _references_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("prior") == "references" and not value:
            raise ValueError("prior 'references' needs references: a folder with frames.json on the server's "
                             "disk (--references DIR on the command line)")
        return value

    @model_validator(mode="after")
    def _one_path(self) -> "SceneWalkRequest":
        if self.cameras is not None:
            if len(self.cameras) < 2:
                raise ValueError(f"a path of {len(self.cameras)} camera(s): a scene walk needs at least 2 "
                                 "(animate the camera over more frames, or give camera and motion instead)")
            if self.camera is not None or self.motion is not None:
                raise ValueError("give either cameras (a path) or camera and motion (a preset move), not both")
        elif self.camera is None or self.motion is None:
            raise ValueError("the walk needs a path: cameras (one per frame), or camera and motion "
                             "(--path PATH.json, or --camera CAM.json --motion forward on the command line)")
        if self.depth_image is not None and self.image is None:
            raise ValueError("depth_image is the start image's depth: send image (the start frame) with it")
        return self

    def subject(self) -> str:
        return repr(self.prompt) if self.prompt else "references"

    def frame_count(self) -> int:
        return len(self.cameras) if self.cameras is not None else self.frames


def allowed_range(model: type[BaseModel], loc: tuple[str | int, ...]) -> str | None:
    """The declared bounds of the numeric field at `loc` (e.g. ("mesh", "resolution")) in words,
    e.g. "from 1 to 100000" or "above 0 and at most 1000"; None when it has none. Error messages
    name the whole range, not only the side a value fell off."""
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return None
        field = fields[part]
        nested = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)
                  and issubclass(a, BaseModel)]
        model = nested[0] if nested else None
    if field is None:
        return None
    bounds = {type(b): getattr(b, type(b).__name__.lower()) for b in field.metadata if isinstance(b, (Ge, Gt, Le, Lt))}
    text = {k: str(v) if float(v).is_integer() else f"{v:g}" for k, v in bounds.items()}
    if Ge in text and Le in text:
        return f"from {text[Ge]} to {text[Le]}"
    low = f"at least {text[Ge]}" if Ge in text else f"above {text[Gt]}" if Gt in text else None
    high = f"at most {text[Le]}" if Le in text else f"below {text[Lt]}" if Lt in text else None
    return " and ".join(part for part in (low, high) if part) or None
