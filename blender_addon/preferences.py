"""Add-on preferences (backend URL, token, the backend's Python, auto-start, vertex colours
instead of textures) and the helpers
that turn them into a client."""

from __future__ import annotations

from pathlib import Path

import bpy
import tomllib
from bpy.props import BoolProperty, StringProperty

from . import backend_process
from .client import (
    DEFAULT_URL,
    BackendError,
    Client,
    is_loopback_url,
    local_token_path,
    read_local_token,
)

PACKAGE = __package__


def addon_version() -> str:
    manifest = Path(__file__).with_name("blender_manifest.toml")
    return tomllib.loads(manifest.read_text())["version"]


def user_folder(*parts: str) -> Path:
    """The add-on's own writable folder (Blender's extension user folder)."""
    return Path(bpy.utils.extension_path_user(PACKAGE, path="", create=True)).joinpath(*parts)


def backend_log_path() -> Path:
    return user_folder("backend.log")


class DreamsculptPreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    backend_url: StringProperty(name="Backend URL", default=DEFAULT_URL,
                                description="Address of `dreamsculpt serve` (this machine: http://127.0.0.1:7323)")
    token: StringProperty(name="Token", subtype="PASSWORD",
                          description="Output of `dreamsculpt token`; leave empty to read this machine's token file")
    python: StringProperty(name="Backend Python", subtype="FILE_PATH",
                           description="python executable of the environment where dreamsculpt is installed "
                                       "(empty: the `dreamsculpt` command on PATH)")
    auto_start: BoolProperty(name="Start Backend with Blender", default=False,
                             description="Start the backend when the add-on loads, if none is answering")
    vertex_colors_only: BoolProperty(name="Vertex Colours Only", default=False,
                                     description="Import meshes with their vertex colours instead of their "
                                                 "textures (no images packed into the .blend)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_url")
        row = layout.row()
        row.prop(self, "token")
        if not self.token and is_loopback_url(self.backend_url):
            layout.label(text=f"Token read from {local_token_path()}", icon="INFO")
        layout.prop(self, "python")
        layout.prop(self, "auto_start")
        layout.prop(self, "vertex_colors_only")
        row = layout.row()
        row.operator("dreamsculpt.start_backend", icon="PLAY")
        row.operator("dreamsculpt.stop_backend", icon="PAUSE")
        layout.label(text=f"Backend log: {backend_log_path()}")


def preferences(context=None) -> DreamsculptPreferences:
    return (context or bpy.context).preferences.addons[PACKAGE].preferences


def make_client(context=None) -> Client:
    """A client for the configured backend. A remote URL needs Blender's online access."""
    prefs = preferences(context)
    url = prefs.backend_url.strip() or DEFAULT_URL
    local = is_loopback_url(url)
    if not local and not bpy.app.online_access:
        raise BackendError(f"The backend {url} is on another machine and Blender's online access is off. "
                           "Turn on Preferences > System > Network > Allow Online Access, or use a local backend.")
    token = prefs.token.strip() or (read_local_token() if local else "")
    return Client(url, token)


def start_backend(context=None):
    prefs = preferences(context)
    return backend_process.start(bpy.path.abspath(prefs.python) if prefs.python else "",
                                 prefs.backend_url.strip() or DEFAULT_URL, backend_log_path())
