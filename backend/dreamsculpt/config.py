"""Typed configuration of a run. A method is a combination of parts chosen here.

Presets set resolution and step counts; every field can still be overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from dataclasses import field as _field

DEFAULT_SD_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"
#: MVDream's original release: the hub repo holding sd-v2.1-base-4view.pt (its UNet; the VAE and
#: text encoder it was trained with are Stable Diffusion 2.1-base's, frozen).
DEFAULT_MVDREAM_MODEL = "MVDream/MVDream"
#: DeepFloyd IF stage I (64 px, T5-XXL text encoder). Gated on the hub, under DeepFloyd's own
#: licence: the user accepts it there; Dreamsculpt ships no weights.
DEFAULT_IF_MODEL = "DeepFloyd/IF-I-XL-v1.0"
#: Scene walks: the inpainting model (a 9-channel SD UNet) and an indoor metric depth model.
DEFAULT_INPAINT_MODEL = "stabilityai/stable-diffusion-2-inpainting"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
#: A scene walk's preset moves from one camera (scenes/paths.py).
MOTIONS = ("forward", "backward", "orbit", "pan")
PRIORS = ("sd", "mvdream", "if", "builtin", "references")
#: Priors of scene walks: Stable Diffusion inpainting with a depth model, the built-in rooms,
#: or the user's RGB-D frames (scenes/models.py).
WALK_PRIORS = ("sd", "builtin", "references")
#: The priors that are diffusion models (a model to load), and the one each loads by default.
DEFAULT_MODELS = {"sd": DEFAULT_SD_MODEL, "mvdream": DEFAULT_MVDREAM_MODEL, "if": DEFAULT_IF_MODEL}
#: How a model's noise prediction becomes a gradient: Score Distillation Sampling
#: (DreamFusion) or Score Jacobian Chaining's perturb-and-average scoring (guidance/scores.py).
SCORES = ("sds", "sjc")
#: How the diffusion time of each step is drawn (guidance/base.py, TimestepSchedule):
#: uniform, uniform under a linearly falling ceiling, or DreamTime's monotone decrease.
T_SCHEDULES = ("random", "anneal", "dreamtime")
#: Priors of the image kinds: Zero-1-to-3 (a model), or the built-in shapes, view-conditioned.
IMAGE_PRIORS = ("zero123", "builtin")
ZERO123_VARIANTS = ("auto", "zero123", "stable_zero123")
#: What renders are composited over in training. auto: random solid colours where the prior
#: knows its images' masks (reference sets, the built-in shapes), learned for Stable
#: Diffusion, white otherwise (Zero123).
BACKGROUNDS = ("auto", "white", "random", "learned")
#: image_to_3d: default (lambda_rgb, lambda_mask) per prior. The built-in set already holds the
#: reference, and a heavier pull on it cost IoU (cube from one view, CI size: 0.958 at 0.1,
#: 0.818 at 1.0; bench/bench_image.py). Zero123 knows the picture only through its input, so
#: it gets the heavier pull (untuned: no real weights here).
REFERENCE_WEIGHTS = {"builtin": (0.1, 0.1), "zero123": (1.0, 1.0)}


@dataclass
class FieldConfig:
    grid_resolution: int = 128      # triplane texels per axis
    feature_dim: int = 8
    hidden_dim: int = 32
    bound: float = 1.0              # the field lives in [-bound, bound]^3
    blob_density: float = 10.0      # Magic3D-style initial density blob at the centre ...
    blob_radius: float = 0.5        # ... of this radius (world units)


@dataclass
class RenderConfig:
    resolution: int = 64            # square render size during optimisation
    samples_per_ray: int = 64
    occupancy_resolution: int = 64  # empty-space-skipping grid
    occupancy_update_every: int = 16
    occupancy_threshold: float = 0.01   # alpha of one sample step below which a cell is empty


@dataclass
class CameraConfig:
    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (2.6, 3.2)
    fov_deg: tuple[float, float] = (38.0, 45.0)
    # Posed reference sets: most cameras sit at a reference's viewpoint (plus jitter), where
    # the prior knows the answer exactly; the rest roam the ranges above.
    anchors: tuple[tuple[float, float], ...] = ()   # (azimuth_deg, elevation_deg) pairs
    anchor_probability: float = 0.8
    anchor_jitter_deg: float = 3.0
    # Multi-view priors (MVDream): each sampled camera brings ring - 1 more at 360 / ring degrees
    # of azimuth from it, sharing its elevation, distance and field of view.
    ring: int = 1


@dataclass
class GuidanceConfig:
    prior: str = "sd"               # one of PRIORS
    prompt: str = ""
    negative: str = ""
    model: str = DEFAULT_SD_MODEL   # hub id, local diffusers folder or one .safetensors/.ckpt
    references: str | None = None   # folder of images (+ optional poses.json)
    guidance_scale: float | None = None  # None: the prior's own default (100 for sd)
    t_min: float = 0.02
    t_max: float = 0.98
    t_anneal_to: float | None = None  # t_schedule "anneal": the ceiling at the end (None: 0.5)
    t_schedule: str = "random"      # one of T_SCHEDULES
    score: str = "sds"              # one of SCORES
    perp_neg: bool = False          # Perp-Neg: the other view prompts as perpendicular negatives
    view_dependent: bool = True     # front / side / back / overhead prompts
    view_sigma_deg: float = 10.0    # reference prior: width of the camera-proximity kernel
    fp16: bool = False              # opt-in, CUDA only
    device: str = "auto"            # auto: cuda, then mps, then cpu
    zero123_model: str = DEFAULT_ZERO123_MODEL   # image kinds: hub id, diffusers folder or one file
    zero123_variant: str = "auto"   # camera embedding: auto (from the name) | zero123 | stable_zero123
    background: str = "auto"        # one of BACKGROUNDS


@dataclass
class ShadingConfig:
    warmup_fraction: float = 0.25   # albedo only until this fraction of the run
    p_albedo: float = 0.5           # after warm-up: probabilities of each shading mode
    p_lambertian: float = 0.35
    p_textureless: float = 0.15
    ambient: float = 0.3


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 1
    lr: float = 0.02
    mlp_lr: float = 0.005
    seed: int = 0
    guidance_weight: float = 1.0
    lambda_entropy: float = 0.05    # opacity entropy: surfaces crisp, not semi-transparent
    lambda_orient: float = 1e-2      # orientation: normals face the camera
    lambda_tv: float = 0.1           # smoothness of the triplane features
    lambda_sparsity: float = 0.0
    checkpoint_every: int = 250
    preview_every: int = 50
    preview_size: int = 128          # pixels of the live preview (on_preview)
    preview_budget: float = 0.05     # largest share of the run's time that previews may take


@dataclass
class RefineConfig:
    """Coarse -> fine (Magic3D): the coarse field's surface as a DMTet on a tetrahedral grid,
    rendered by the triangle rasterizer at a higher resolution and optimised with the same
    guidance (see refine.py)."""

    steps: int = 0                  # 0: no refinement
    grid_resolution: int = 64       # DMTet cubes per axis over [-bound, bound]
    band: int = 3                   # cells either side of the coarse surface the tet grid keeps
    resolution: int | None = None   # render size; None: three times the coarse render's, at most 256
                                    # (the cube at 800 steps: 94.4% of its area within 5 degrees of an
                                    # axis at twice, 98.1% at three times)
    t_max: float = 0.2              # highest diffusion time of the guidance (Magic3D's fine stage: 0.5;
                                    # the cube's faces came out flatter at 0.2)
    lr_sdf: float = 2e-4            # world units per step (Adam) for the signed distances ...
    lr_levels: float = 2e-4         # ... for the coarse corrections to them (dmtet.LEVELS; at 2e-3
                                    # the noisy guidance moved whole faces: cube IoU 0.89 -> 0.86)
    lr_deform: float = 1e-2         # ... and for the offsets (tanh space: 0.45 cell at saturation)
    lr_texture: float = 5e-3        # the coarse field's planes (its MLP at a fifth): the albedo
    lambda_normal: float = 0.02     # normal consistency across edges (refine.normal_consistency)
    lambda_area: float = 0.015      # surface area over the starting surface's (refine.surface_area):
                                    # what flattens faces the silhouettes do not see
    lambda_laplacian: float = 0.0   # uniform Laplacian of the vertices (per cell^2); off: at 0.1 it
                                    # pulled the cube's vertices to the middle of the grid's edges
    lr_decay_from: float = 0.6      # the learning rates fall geometrically from this share of the steps ...
    lr_decay_to: float = 0.1        # ... to this fraction at the end (see refine.Refiner.learning_rate_factor)


#: Where the exported mesh's origin goes: its bounding box's centre, or the centre of its bottom.
ORIGINS = ("center", "bottom")


@dataclass
class MeshConfig:
    resolution: int = 256
    threshold: float | None = None   # None: automatic (see mesh.auto_threshold)
    min_component_fraction: float = 0.05   # drop pieces smaller than this share of faces
    max_faces: int = 50_000          # decimate to this face budget before anything else
    texture_size: int = 1024         # base-colour texture, texels per side
    normal_map: bool = False         # also bake a tangent-space normal map from the dense surface
    size: float | None = None        # longest side in metres (None: the field's own units)
    origin: str = "center"           # one of ORIGINS
    export_obj: bool = False


@dataclass
class ImageConfig:
    """The reference image of the image kinds and how it is used (see picture.py)."""

    path: str = ""                  # PNG/JPG/WebP; with alpha, the alpha is the object's mask
    camera: dict | None = None      # a Blender camera (images.CameraSpec); None: the orbit below
    elevation_deg: float = 0.0      # without a camera: the view the image was taken from
    azimuth_deg: float = -90.0      # front (Blender's -Y)
    fov_deg: float = 40.0
    depth: float | None = None      # camera to object centre, world units (placement scale only)
    size: int = 256                 # side of the resampled reference image (Zero123's input size)
    fill: float = 0.7               # share of the frame the object's larger extent takes
    lambda_rgb: float | None = None   # reference-view losses (per-pixel means); None: the
    lambda_mask: float | None = None  # prior's default (REFERENCE_WEIGHTS)
    view_count: int = 8             # novel views: a ring of this many views (the reference included)
    views: tuple[tuple[float, float], ...] = ()   # ... or these (d_azimuth, d_elevation), degrees
    autoregressive: bool = False    # condition each new view on the nearest ones made (GeNVS-style)
    neighbours: int = 2             # ... this many of them
    sample_steps: int = 50          # DDIM steps per novel view
    text_weight: float = 0.0        # image_to_3d: weight of text SDS (Magic123); 0: image only


@dataclass
class RunConfig:
    kind: str = "text_to_3d"
    image: ImageConfig = _field(default_factory=ImageConfig)
    guidance: GuidanceConfig = _field(default_factory=GuidanceConfig)
    field: FieldConfig = _field(default_factory=FieldConfig)
    render: RenderConfig = _field(default_factory=RenderConfig)
    camera: CameraConfig = _field(default_factory=CameraConfig)
    shading: ShadingConfig = _field(default_factory=ShadingConfig)
    train: TrainConfig = _field(default_factory=TrainConfig)
    mesh: MeshConfig = _field(default_factory=MeshConfig)
    refine: RefineConfig = _field(default_factory=RefineConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def refine_resolution(self) -> int:
        """The fine stage's render size."""
        return self.refine.resolution or min(3 * self.render.resolution, 256)

    @property
    def refine_prior_resolution(self) -> int:
        """The size the fine stage's prior is built for: its renders', at most 192 px (an image
        set's denoiser holds every image at this size: a built-in shape's 8 colours x 72 views
        are 255 MB at 192 px, the whole library 1.3 GB, 2.3 GB at 256; it compares the renders
        box-filtered down to it)."""
        return min(self.refine_resolution, max(192, self.render.resolution))

    def refine_guidance(self) -> GuidanceConfig:
        """The guidance settings of the fine stage: the coarse stage's, with its noise range."""
        return replace(self.guidance, t_max=min(self.refine.t_max, self.guidance.t_max))

    @staticmethod
    def from_dict(data: dict) -> "RunConfig":
        return _build(RunConfig, data)


def _build(cls, data: dict):
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        if is_dataclass(default):
            value = _build(type(default), value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)


#: name -> render resolution, steps, mesh resolution, face budget, texture size and refinement
#: steps. The face
#: budget bounds the UV unwrap's time (xatlas: 6.4 s for 50k faces, 93 s for 200k on 2 cores).
PRESETS: dict[str, dict] = {
    "preview": {"resolution": 32, "steps": 600, "mesh_resolution": 128, "max_faces": 10_000, "texture_size": 512,
                "refine": 0},
    "standard": {"resolution": 64, "steps": 1500, "mesh_resolution": 256, "max_faces": 50_000,
                 "texture_size": 1024, "refine": 0},
    "high": {"resolution": 128, "steps": 4000, "mesh_resolution": 384, "max_faces": 100_000,
             "texture_size": 2048, "refine": 1000},
}


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    preset = PRESETS[name]
    config.render.resolution = preset["resolution"]
    config.train.steps = preset["steps"]
    config.mesh.resolution = preset["mesh_resolution"]
    config.mesh.max_faces = preset["max_faces"]
    config.mesh.texture_size = preset["texture_size"]
    config.refine.steps = preset["refine"]
    return config


#: Accepted ranges (inclusive) of the options the CLI and the job server share.
LIMITS: dict[str, tuple[int, int]] = {
    "walk_frames": (2, 1000),
    "walk_resolution": (64, 1024),
    "walk_faces": (10_000, 20_000_000),
    "steps": (1, 100_000),
    "refine": (0, 100_000),
    "resolution": (16, 512),
    "mesh_resolution": (32, 1024),
    "max_faces": (4, 5_000_000),
    "texture_size": (64, 8192),
    "seed": (0, 2**32 - 1),
    "view_count": (2, 64),
    "sample_steps": (1, 1000),
}


def build_config(prompt: str, *, prior: str = "sd", negative: str = "", model: str = DEFAULT_SD_MODEL,
                 references: str | None = None, preset: str = "standard", seed: int = 0,
                 steps: int | None = None, refine: int | None = None, guidance_scale: float | None = None,
                 resolution: int | None = None, mesh_resolution: int | None = None,
                 threshold: float | None = None, max_faces: int | None = None,
                 texture_size: int | None = None, normal_map: bool = False, size: float | None = None,
                 origin: str = "center", obj: bool = False, device: str = "auto",
                 fp16: bool = False, background: str = "auto") -> RunConfig:
    """The RunConfig of a text-to-3D run from the options a user gives (CLI flags or a job
    request); None keeps the preset's value. Range checks are the caller's (see LIMITS)."""
    config = apply_preset(RunConfig(), preset)
    g = config.guidance
    g.prior, g.prompt, g.negative, g.model, g.references = prior, prompt, negative, model, references
    g.guidance_scale, g.device, g.fp16, g.background = guidance_scale, device, fp16, background
    config.train.seed = seed
    if steps is not None:
        config.train.steps = steps
    if refine is not None:
        config.refine.steps = refine
    if resolution is not None:
        config.render.resolution = resolution
    if mesh_resolution is not None:
        config.mesh.resolution = mesh_resolution
    m = config.mesh
    m.threshold, m.normal_map, m.size, m.origin, m.export_obj = threshold, normal_map, size, origin, obj
    if max_faces is not None:
        m.max_faces = max_faces
    if texture_size is not None:
        m.texture_size = texture_size
    return config


def build_image_config(kind: str, image: str, *, prior: str = "zero123", camera: dict | None = None,
                       depth: float | None = None, elevation_deg: float = 0.0, azimuth_deg: float = -90.0,
                       fov_deg: float = 40.0, model: str = DEFAULT_ZERO123_MODEL, variant: str = "auto",
                       prompt: str = "", text_weight: float = 0.0, text_model: str = DEFAULT_SD_MODEL,
                       preset: str = "standard", seed: int = 0, steps: int | None = None,
                       refine: int | None = None, guidance_scale: float | None = None, resolution: int | None = None,
                       mesh_resolution: int | None = None, threshold: float | None = None,
                       max_faces: int | None = None, obj: bool = False, device: str = "auto",
                       fp16: bool = False, view_count: int = 8,
                       views: list[tuple[float, float]] | None = None, autoregressive: bool = False,
                       neighbours: int = 2, sample_steps: int | None = None, background: str = "auto",
                       **asset) -> RunConfig:
    """The RunConfig of an image_to_3d or novel_views run (CLI flags or a job request). For
    novel_views `steps` is not used: `sample_steps` (default 50) sets the denoising steps."""
    config = build_config(prompt, prior=prior, model=text_model, preset=preset, seed=seed, steps=steps,
                          refine=refine, guidance_scale=guidance_scale, resolution=resolution,
                          mesh_resolution=mesh_resolution, threshold=threshold, max_faces=max_faces,
                          obj=obj, device=device, fp16=fp16, background=background, **asset)
    config.kind = kind
    config.guidance.zero123_model, config.guidance.zero123_variant = model, variant
    i = config.image
    i.path, i.camera, i.depth = str(image), camera, depth
    i.elevation_deg, i.azimuth_deg, i.fov_deg = elevation_deg, azimuth_deg, fov_deg
    i.text_weight, i.view_count, i.autoregressive, i.neighbours = text_weight, view_count, autoregressive, neighbours
    i.views = tuple((float(a), float(e)) for a, e in (views or ()))
    if sample_steps is not None:
        i.sample_steps = sample_steps
    return config
