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
          ("references", "Reference images", "A folder of images on the backend's machine")]
PRESETS = [("preview", "Preview", "32 px renders, 600 steps: rough, fast"),
           ("standard", "Standard", "64 px renders, 1500 steps"),
           ("high", "High", "128 px renders, 4000 steps: slow")]
STATUSES = ["queued", "running", "done", "failed", "cancelled", "interrupted"]


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


class DreamsculptSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a red cube'", default="a red cube")
    negative: StringProperty(name="Negative", description="What to avoid (Stable Diffusion)")
    prior: EnumProperty(name="Prior", items=PRIORS, default="builtin")
    model: StringProperty(name="Model", default="stabilityai/stable-diffusion-2-1-base",
                          description="Hub id, diffusers folder or .safetensors file, on the backend's machine")
    references: StringProperty(name="References", description="Folder of reference images on the backend's machine")
    seed: IntProperty(name="Seed", default=0, min=0, max=2**31 - 1)
    preset: EnumProperty(name="Quality", items=PRESETS, default="standard")
    steps: IntProperty(name="Steps", default=0, min=0, max=100_000, description="Optimisation steps (0: the preset's)")
    guidance_scale: FloatProperty(name="Guidance Scale", default=0.0, min=0.0, max=1000.0,
                                  description="Classifier-free guidance (0: the prior's default)")
    mesh_resolution: IntProperty(name="Mesh Resolution", default=0, min=0, max=1024,
                                 description="Marching-cubes grid size (0: the preset's)")
    threshold: FloatProperty(name="Threshold", default=0.0, min=0.0, description="Surface density (0: automatic)")
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
