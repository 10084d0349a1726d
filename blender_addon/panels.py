"""The sidebar (3D Viewport > N > Dreamsculpt). draw() never touches the network: it shows
what the background threads last found, and asks them to look again."""

from __future__ import annotations

import bpy

from . import backend_process
from .job_requests import MODEL_SETTINGS, PERP_NEG_PRIORS
from .model_watch import progress_text
from .properties import WALK_PRIORS
from .results import preview_icon
from .timer import MONITOR
from .watchers import is_followed

BACKEND_STATES = {
    "checking": ("TIME", "Checking the backend…"),
    "connected": ("CHECKMARK", "Backend connected"),
    "not_running": ("ERROR", "Backend not running"),
    "wrong_token": ("LOCKED", "Wrong token"),
    "untrusted": ("LOCKED", "Certificate not trusted"),
    "version_mismatch": ("ERROR", "Version mismatch"),
    "offline": ("ERROR", "Online access is off"),
    "error": ("ERROR", "Backend error"),
}


def _wrapped(layout, text: str, width: int = 42) -> None:
    line = ""
    for word in text.split():
        if len(line) + len(word) + 1 > width and line:
            layout.label(text=line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        layout.label(text=line)


def draw_backend(layout, state) -> None:
    box = layout.box()
    icon, title = BACKEND_STATES.get(state.kind, ("QUESTION", state.kind))
    row = box.row()
    row.label(text=title, icon=icon)
    row.operator("dreamsculpt.refresh_backend", text="", icon="FILE_REFRESH")
    if state.kind == "connected":
        health = state.health
        box.label(text=f"{health.get('device') or 'device unknown'} · queue {health.get('queue', 0)}")
        models = health.get("models") or []
        box.label(text="Models: " + (", ".join(models) if models else "none loaded yet"))
        return
    col = box.column(align=True)
    _wrapped(col, state.message)
    if state.kind == "not_running":
        if backend_process.running():
            col.label(text="Starting…", icon="TIME")
        else:
            box.operator("dreamsculpt.start_backend", icon="PLAY")
    elif state.kind in ("wrong_token", "untrusted"):   # the token, or the CA file, is a preference
        box.operator("preferences.addon_show", text="Open Preferences", icon="PREFERENCES").module = __package__


def draw_progress(layout, s) -> None:
    total = max(s.job_total, 1)
    eta = f" · ETA {s.job_eta:.0f} s" if s.job_eta > 0 else ""
    text = progress_text(s.job_stage or s.job_status, s.job_step, s.job_total) + eta   # "Downloading 1.2 / 4.9 GB"
    layout.progress(factor=min(s.job_step / total, 1.0), type="BAR", text=text)
    icon = preview_icon(s.preview_image)
    if icon:
        layout.template_icon(icon_value=icon, scale=8.0)
    layout.operator("dreamsculpt.cancel", icon="CANCEL")


def draw_text_mode(col, s) -> None:
    col.prop(s, "prompt", text="")
    if s.prior in MODEL_SETTINGS:
        col.prop(s, "negative", text="", placeholder="Negative prompt")
    col.prop(s, "prior")
    if s.prior in MODEL_SETTINGS:
        col.prop(s, MODEL_SETTINGS[s.prior])
    elif s.prior == "references":
        col.prop(s, "references")
    col.prop(s, "score")
    col.prop(s, "t_schedule")
    if s.prior in PERP_NEG_PRIORS:
        col.prop(s, "perp_neg")


def camera_problem(scene) -> str:
    """Why the active camera cannot be captured ("" when it can); for draw(), no rendering."""
    camera = scene.camera
    if camera is None or camera.type != "CAMERA":
        return "No active camera"
    if camera.data.type != "PERSP":
        return f"'{camera.name}' is not a perspective camera"
    return ""


def draw_image_mode(col, s, scene) -> None:
    col.row().prop(s, "image_source", expand=True)
    if s.image_source == "FILE":
        col.prop(s, "image_path", text="")
    else:
        problem = camera_problem(scene)
        col.label(text=problem or f"Camera: {scene.camera.name}", icon="ERROR" if problem else "CAMERA_DATA")
    col.prop(s, "image_prior")
    if s.image_prior == "zero123":
        col.prop(s, "zero123_model")
    if s.mode == "novel_views":
        col.prop(s, "view_count")
        col.prop(s, "autoregressive")
        col.prop(s, "view_planes")


def draw_walk_mode(col, s, scene) -> None:
    """The scene walk: what the scene is, the path, and where it starts."""
    col.prop(s, "prompt", text="")
    col.prop(s, "prior")
    if s.prior not in WALK_PRIORS:
        col.label(text="Scene walks use Stable Diffusion, Built-in shapes or Reference images", icon="ERROR")
    if s.prior == "sd":
        col.prop(s, "inpaint_model")
        col.prop(s, "depth_model")
    elif s.prior == "references":
        col.prop(s, "references")
    col.row().prop(s, "walk_path", expand=True)
    problem = camera_problem(scene)
    col.label(text=problem or f"Camera: {scene.camera.name}", icon="ERROR" if problem else "CAMERA_DATA")
    if s.walk_path == "ANIMATION":
        col.prop(s, "walk_every")
        count = len(range(scene.frame_start, scene.frame_end + 1, s.walk_every))
        col.label(text=f"{count} path frames from {scene.frame_start} to {scene.frame_end}")
    else:
        col.prop(s, "walk_motion")
        row = col.row(align=True)
        row.prop(s, "walk_frames")
        row.prop(s, "walk_step")
    col.row().prop(s, "walk_start", expand=True)
    col.prop(s, "walk_resolution")


def draw_asset(col, s) -> None:
    """The mesh kinds' asset: how large (0: automatic) and where its origin is."""
    row = col.row(align=True)
    row.prop(s, "size")
    row.prop(s, "origin", text="")


GENERATE_TEXT = {"text_to_3d": "Generate", "image_to_3d": "Make 3D from Image", "novel_views": "Make Novel Views",
                 "scene_walk": "Walk the Scene"}
#: The kinds that optimise a field into a mesh (quality preset, asset and mesh options).
MESH_MODES = ("text_to_3d", "image_to_3d")


class VIEW3D_PT_dreamsculpt(bpy.types.Panel):
    bl_space_type, bl_region_type, bl_category = "VIEW_3D", "UI", "Dreamsculpt"
    bl_label = "Dreamsculpt"

    def draw(self, context):
        layout, s = self.layout, context.scene.dreamsculpt
        MONITOR.refresh()
        draw_backend(layout, MONITOR.state)
        layout.prop(s, "mode", text="")
        col = layout.column()
        if s.mode == "text_to_3d":
            draw_text_mode(col, s)
        elif s.mode == "scene_walk":
            draw_walk_mode(col, s, context.scene)
        else:
            draw_image_mode(col, s, context.scene)
        row = col.row(align=True)
        row.prop(s, "seed")
        row.operator("dreamsculpt.randomize_seed", text="", icon="FILE_REFRESH")
        if s.mode in MESH_MODES:
            col.prop(s, "preset")
            draw_asset(col, s)
        if is_followed(s.job_id):
            draw_progress(layout, s)
        else:
            row = layout.row()
            row.scale_y = 1.5
            row.enabled = MONITOR.state.connected
            row.operator("dreamsculpt.generate", text=GENERATE_TEXT[s.mode], icon="SHADERFX")
        if s.last_error:
            box = layout.box()
            box.alert = True
            _wrapped(box.column(align=True), s.last_error)


class VIEW3D_PT_dreamsculpt_advanced(bpy.types.Panel):
    bl_space_type, bl_region_type, bl_category = "VIEW_3D", "UI", "Dreamsculpt"
    bl_label, bl_parent_id, bl_options = "Advanced", "VIEW3D_PT_dreamsculpt", {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.dreamsculpt
        col = self.layout.column()
        col.prop(s, "steps", text="Steps" if s.mode in MESH_MODES else "Denoising Steps")
        col.prop(s, "guidance_scale")
        if s.mode in MESH_MODES:
            col.prop(s, "refine_mode")
            if s.refine_mode == "CUSTOM":
                col.prop(s, "refine_steps")
            col.prop(s, "mesh_resolution")
            col.prop(s, "threshold")
            col.prop(s, "max_faces")
            col.prop(s, "texture_size")
            col.prop(s, "normal_map")
        if s.mode == "image_to_3d":
            col.separator()
            col.prop(s, "image_prompt")
            col.prop(s, "text_weight")
        if s.mode == "scene_walk":
            if s.walk_start == "RENDER":
                col.separator()
                col.prop(s, "capture_samples")
        elif s.mode != "text_to_3d":
            col.separator()
            if s.image_source == "CAMERA":
                col.prop(s, "capture_size")
                col.prop(s, "capture_samples")
            else:
                col.label(text="The view the image was taken from:")
                col.prop(s, "elevation")
                col.prop(s, "azimuth")
                col.prop(s, "fov")
        if s.mode != "novel_views":
            col.prop(s, "replace_previous")


MODE_NAMES = {"image_to_3d": "Image → 3D", "novel_views": "Views", "scene_walk": "Walk"}


class DREAMSCULPT_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        icons = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "X", "running": "TIME", "queued": "SORTTIME",
                 "uploading": "EXPORT"}
        row = layout.row(align=True)
        text = item.prompt or "(no prompt)"
        if item.mode == "scene_walk":
            text = f"{MODE_NAMES[item.mode]}: {item.prompt}"
        elif item.mode in MODE_NAMES:
            text = f"{MODE_NAMES[item.mode]}: {item.source}"
        row.label(text=text, icon=icons.get(item.status, "QUESTION"))
        row.label(text=f"seed {item.seed} · {item.created[-5:]}")


class VIEW3D_PT_dreamsculpt_history(bpy.types.Panel):
    bl_space_type, bl_region_type, bl_category = "VIEW_3D", "UI", "Dreamsculpt"
    bl_label, bl_parent_id = "History", "VIEW3D_PT_dreamsculpt"

    def draw(self, context):
        s, layout = context.scene.dreamsculpt, self.layout
        layout.template_list("DREAMSCULPT_UL_history", "", s, "history", s, "history_index", rows=4)
        if not 0 <= s.history_index < len(s.history):
            return
        entry = s.history[s.history_index]
        col = layout.column(align=True)
        if entry.mode == "novel_views":
            col.label(text=f"{entry.status} · {entry.prior} · novel views · job {entry.job_id}")
        elif entry.mode == "scene_walk":
            col.label(text=f"{entry.status} · {entry.prior} · scene walk from '{entry.source}' · job {entry.job_id}")
        else:
            col.label(text=f"{entry.status} · {entry.prior} · {entry.preset} · job {entry.job_id}")
        if entry.error:
            _wrapped(col, entry.error)
        row = layout.row(align=True)
        row.operator("dreamsculpt.history_import", icon="IMPORT").index = s.history_index
        row.operator("dreamsculpt.history_copy_prompt", icon="GREASEPENCIL").index = s.history_index
        row = layout.row(align=True)
        op = row.operator("dreamsculpt.history_rerun", text="Same Seed", icon="LOOP_BACK")
        op.index, op.new_seed = s.history_index, False
        op = row.operator("dreamsculpt.history_rerun", text="New Seed", icon="FILE_REFRESH")
        op.index, op.new_seed = s.history_index, True
        layout.operator("dreamsculpt.history_delete", icon="TRASH").index = s.history_index


CLASSES = (VIEW3D_PT_dreamsculpt, VIEW3D_PT_dreamsculpt_advanced, DREAMSCULPT_UL_history,
           VIEW3D_PT_dreamsculpt_history)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
