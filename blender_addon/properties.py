"""The add-on's data on the Scene (`bpy.types.Scene.dreamsculpt`): the prompt editor, the
running job's progress, and this scene's history of jobs (saved with the .blend)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

PRIORS = [("builtin", "Built-in shapes", "Offline analytic shapes (cube, sphere, torus, cone, cylinder)"),
          ("sd", "Stable Diffusion", "Text-to-image diffusion model (a GPU is strongly advised)"),
          ("mvdream", "MVDream", "Multi-view diffusion: four views at once, each knowing its camera, so no faces on "
                                 "every side (text to 3D; a GPU is strongly advised)"),
          ("if", "DeepFloyd IF", "DeepFloyd IF stage I, 64 px pixel-space diffusion with a T5 text encoder (text to "
                                 "3D; gated licence; a GPU with much memory is advised)"),
          ("references", "Reference images", "A folder of images on the backend's machine")]
#: The priors of scene walks (the others are text to 3D only).
WALK_PRIORS = ("sd", "builtin", "references")
#: The priors that are diffusion models: they take the score, time schedule and a model.
MODEL_PRIORS = ("sd", "mvdream", "if")
SCORES = [("sds", "SDS", "Score Distillation Sampling (DreamFusion)"),
          ("sjc", "SJC", "Score Jacobian Chaining: perturb-and-average scoring (two noise draws a step)")]
T_SCHEDULES = [("random", "Random", "Uniform diffusion times"),
               ("anneal", "Anneal", "Uniform times under a ceiling that falls to 0.5 over the run"),
               ("dreamtime", "DreamTime", "One time a step, falling monotonically: shape first, then detail")]
DEFAULT_MVDREAM_MODEL = "MVDream/MVDream"
DEFAULT_IF_MODEL = "DeepFloyd/IF-I-XL-v1.0"
PRESETS = [("preview", "Preview", "32 px renders, 600 steps: rough, fast"),
           ("standard", "Standard", "64 px renders, 1500 steps"),
           ("high", "High", "128 px renders, 4000 steps: slow")]
STATUSES = ["uploading", "queued", "running", "done", "failed", "cancelled", "interrupted"]
MODES = [("text_to_3d", "Text → 3D", "A coloured mesh from a prompt"),
         ("image_to_3d", "Camera image → 3D",
          "A mesh from one image, placed so that it lines up with what the camera saw"),
         ("novel_views", "Novel views", "Pictures of the object from around it, from one image"),
         ("scene_walk", "Scene walk",
          ("A scene mesh made frame by frame along the camera's path (SceneScape), extending the render of "
           "your scene or made from the prompt"))]
IMAGE_SOURCES = [("CAMERA", "Active Camera",
                  "Render the scene's active camera (transparent film: the alpha is the object's mask)"),
                 ("FILE", "Image File", "A PNG, JPEG or WebP on this machine (with alpha, or on a plain background)")]
IMAGE_PRIORS = [("zero123", "Zero123", "Zero-1-to-3 novel-view diffusion (a GPU is strongly advised)"),
                ("builtin", "Built-in shapes", "Offline analytic shapes, view-conditioned")]
DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"
#: Refinement has its own choice beside its steps: 0 steps means off, so 0 cannot also mean "the preset's".
REFINE_MODES = [("PRESET", "Preset", "As the Quality preset: on for High (1000 steps), off for Preview and Standard"),
                ("OFF", "Off", "No refinement: the mesh is the field's surface"),
                ("CUSTOM", "Custom", "Refine the mesh for Refine Steps")]
WALK_PATHS = [("ANIMATION", "Camera Animation",
               "The active camera's animation over the scene's frame range, every k-th frame"),
              ("PRESET", "Preset Move", "A move from the active camera as it is now")]
MOTIONS = [("forward", "Forward", "Along the view, metres a frame"),
           ("backward", "Backward", "Back along the view, metres a frame"),
           ("orbit", "Orbit", "Around the point 2 m ahead, to the right, degrees a frame"),
           ("pan", "Pan", "Turning right on the spot, degrees a frame")]
WALK_STARTS = [("RENDER", "Scene Render",
                "Start from the active camera's render of your scene (and its depth): the walk extends your set"),
               ("PROMPT", "Prompt Only", "The first frame is made from the prompt")]
DEFAULT_INPAINT_MODEL = "stabilityai/stable-diffusion-2-inpainting"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
ORIGINS = [("center", "Center", "The object's origin is the centre of its bounding box"),
           ("bottom", "Bottom", "The object's origin is the centre of its bottom: it stands on the 3D cursor")]


class DreamsculptHistoryEntry(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    prompt: StringProperty(name="Prompt")
    negative: StringProperty(name="Negative")
    prior: StringProperty(name="Prior")
    model: StringProperty(name="Model")
    references: StringProperty(name="References")
    preset: StringProperty(name="Preset")
    seed: IntProperty(name="Seed")
    status: StringProperty(name="Status", default="queued")
    error: StringProperty(name="Error")
    created: StringProperty(name="Created", description="When the job was submitted (local time)")
    object_name: StringProperty(name="Object", description="The object this job's result was imported as")
    mode: StringProperty(name="Mode", default="text_to_3d")
    source: StringProperty(name="Source", description="Image modes: the camera's name, or the file's")
    image_path: StringProperty(name="Image", description="Image modes: the image sent (the capture, or the "
                                                         "picked file)")
    request: StringProperty(name="Request", description="The job's body (JSON; image modes without the image's id)")
    view_planes: BoolProperty(name="Image Planes")
    frame_start: IntProperty(name="Frame Start", default=1,
                             description="Scene walk: the timeline frame of the path's first camera")
    frame_step: IntProperty(name="Frame Step", default=1, min=1,
                            description="Scene walk: timeline frames between the path's cameras")


class DreamsculptSettings(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="text_to_3d")
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a red cube'", default="a red cube")
    negative: StringProperty(name="Negative", description="What to avoid (Stable Diffusion)")
    prior: EnumProperty(name="Prior", items=PRIORS, default="builtin")
    model: StringProperty(name="Model", default="stabilityai/stable-diffusion-2-1-base",
                          description="Hub id, diffusers folder or .safetensors file, on the backend's machine")
    mvdream_model: StringProperty(name="Model", default=DEFAULT_MVDREAM_MODEL,
                                  description="MVDream: hub id, converted diffusers folder or the original "
                                              "sd-v2.1-base-4view checkpoint, on the backend's machine")
    if_model: StringProperty(name="Model", default=DEFAULT_IF_MODEL,
                             description="DeepFloyd IF stage I: hub id or diffusers folder, on the backend's machine")
    score: EnumProperty(name="Score", items=SCORES, default="sds",
                        description="How the diffusion model's prediction becomes a gradient")
    t_schedule: EnumProperty(name="Time Schedule", items=T_SCHEDULES, default="random",
                             description="How each step's diffusion time is drawn")
    perp_neg: BoolProperty(name="Perp-Neg", default=False,
                           description="The other views' prompts as negatives (their parts perpendicular to the "
                                       "view's own): fewer faces on every side (Stable Diffusion and IF)")
    references: StringProperty(name="References", description="Folder of reference images on the backend's machine")
    seed: IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    preset: EnumProperty(name="Quality", items=PRESETS, default="standard")
    steps: IntProperty(name="Steps", default=0, min=0, max=100_000,
                       description="Optimisation steps (0: the preset's); novel views: denoising steps per view "
                                   "(0: 50); scene walk: denoising steps per frame (0: 30)")
    guidance_scale: FloatProperty(name="Guidance Scale", default=0.0, min=0.0, max=1000.0,
                                  description="Classifier-free guidance (0: the prior's default)")
    refine_mode: EnumProperty(name="Refine Mesh", items=REFINE_MODES, default="PRESET",
                              description="Refinement of the mesh after the field: as the preset, off, or custom")
    refine_steps: IntProperty(name="Refine Steps", default=1000, min=1, max=100_000,
                              description="Mesh refinement steps after the field (Refine Mesh: Custom)")
    mesh_resolution: IntProperty(name="Mesh Resolution", default=0, min=0, max=1024,
                                 description="Marching-cubes grid size (0: the preset's)")
    threshold: FloatProperty(name="Threshold", default=0.0, min=0.0, description="Surface density (0: automatic)")
    # The mesh kinds' asset: real-world size, origin, texture (MeshOptions).
    size: FloatProperty(name="Size (m)", default=0.0, min=0.0, max=10_000.0, soft_max=100.0, precision=3,
                        description="The longest side of the object, metres (0: automatic, about 1.5)")
    origin: EnumProperty(name="Origin", items=ORIGINS, default="center")
    texture_size: IntProperty(name="Texture Size", default=0, min=0, max=8192,
                              description="Base-colour texture, pixels per side, 64 to 8192 (0: the preset's, "
                                          "512 / 1024 / 2048)")
    normal_map: BoolProperty(name="Normal Map", default=False,
                             description="Also bake a tangent-space normal map of the surface's detail")
    max_faces: IntProperty(name="Max Faces", default=0, min=0, max=5_000_000,
                           description="Face budget of the mesh (0: the preset's, 10k / 50k / 100k; more takes "
                                       "longer to unwrap)")

    # Image modes.
    image_source: EnumProperty(name="Source", items=IMAGE_SOURCES, default="CAMERA")
    image_path: StringProperty(name="Image", subtype="FILE_PATH", description="The image to start from")
    image_prior: EnumProperty(name="Prior", items=IMAGE_PRIORS, default="zero123")
    zero123_model: StringProperty(name="Model", default=DEFAULT_ZERO123_MODEL,
                                  description="Zero123 weights: hub id, diffusers folder or one file, on the "
                                              "backend's machine")
    view_count: IntProperty(name="Views", default=8, min=2, max=64,
                            description="Novel views: how many, in a ring around the object (the image included)")
    autoregressive: BoolProperty(name="Autoregressive", default=False,
                                 description="Condition each new view on the nearest views already made "
                                             "(more consistent, slower)")
    view_planes: BoolProperty(name="Image Planes Around the Object", default=False,
                              description="Also show each view as an image plane where its camera stands")
    image_prompt: StringProperty(name="Prompt", description="Camera image → 3D: optional text to guide the "
                                                           "unseen sides (with Text Weight > 0)")
    text_weight: FloatProperty(name="Text Weight", default=0.0, min=0.0, max=100.0,
                               description="Weight of text guidance next to the image's (0: image only)")
    elevation: FloatProperty(name="Elevation", default=0.0, min=-89.0, max=89.0,
                             description="An image file: the elevation it was taken from, degrees")
    azimuth: FloatProperty(name="Azimuth", default=-90.0, min=-360.0, max=360.0,
                           description="An image file: the azimuth it was taken from, degrees (-90: Front)")
    fov: FloatProperty(name="Field of View", default=40.0, min=5.0, max=150.0,
                       description="An image file: the camera's field of view, degrees")
    capture_size: IntProperty(name="Capture Size", default=512, min=64, max=4096,
                              description="Longer side of the camera render, pixels")
    capture_samples: IntProperty(name="Capture Samples", default=16, min=1, max=4096,
                                 description="Render samples of the capture (Cycles, EEVEE)")
    # Scene walk.
    walk_path: EnumProperty(name="Path", items=WALK_PATHS, default="ANIMATION")
    walk_every: IntProperty(name="Every k Frames", default=1, min=1, max=1000,
                            description="Take the camera at every k-th frame of the scene's frame range")
    walk_motion: EnumProperty(name="Motion", items=MOTIONS, default="forward")
    walk_frames: IntProperty(name="Frames", default=20, min=2, max=1000,
                             description="Frames of the preset move, the start included")
    walk_step: FloatProperty(name="Step", default=0.0, min=0.0, max=100.0,
                             description="The move's step per frame: metres (forward, backward) or degrees "
                                         "(orbit, pan); 0: 0.1 m or 5 degrees")
    walk_start: EnumProperty(name="Start", items=WALK_STARTS, default="RENDER")
    walk_resolution: IntProperty(name="Resolution", default=512, min=64, max=1024,
                                 description="Longer side of the walk's frames (and of the start render), pixels")
    inpaint_model: StringProperty(name="Inpainting Model", default=DEFAULT_INPAINT_MODEL,
                                  description="Scene walk: Stable Diffusion inpainting model, hub id, diffusers "
                                              "folder or one file, on the backend's machine")
    depth_model: StringProperty(name="Depth Model", default=DEFAULT_DEPTH_MODEL,
                                description="Scene walk: depth model, hub id or transformers folder, on the "
                                            "backend's machine")
    replace_previous: BoolProperty(name="Replace Previous", default=False,
                                   description="Importing a history entry again replaces the object it made before")

    # The running job (filled by the poll timer).
    job_id: StringProperty(name="Running Job")
    job_status: StringProperty(name="Status")
    job_stage: StringProperty(name="Stage")
    job_step: IntProperty(name="Step")
    job_total: IntProperty(name="Total")
    job_eta: FloatProperty(name="ETA", subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE")
    last_error: StringProperty(name="Last Error")
    preview_image: StringProperty(name="Preview Image", description="Name of the live preview image")

    history: CollectionProperty(type=DreamsculptHistoryEntry)
    history_index: IntProperty(name="History Index", default=-1)


CLASSES = (DreamsculptHistoryEntry, DreamsculptSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.dreamsculpt = PointerProperty(type=DreamsculptSettings)


def unregister() -> None:
    del bpy.types.Scene.dreamsculpt
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
