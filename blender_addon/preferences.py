"""Add-on preferences (backend URL, token, the CA file of a team server's certificate, the
owner named on jobs, the backend's Python, auto-start, vertex colours instead of textures), the
backend's models (its Hugging Face cache: state, size, Download and Remove), and the helpers
that turn them into a client."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import bpy
import tomllib
from bpy.props import BoolProperty, StringProperty

from . import backend_process
from .client import (
    DEFAULT_URL,
    BackendError,
    Client,
    clear_text_remote,
    is_loopback_url,
    local_token_path,
    read_local_token,
    url_problem,
)
from .model_watch import ModelsMonitor, model_summary

PACKAGE = __package__


def addon_version() -> str:
    manifest = Path(__file__).with_name("blender_manifest.toml")
    return tomllib.loads(manifest.read_text())["version"]


def user_folder(*parts: str) -> Path:
    """The add-on's own writable folder (Blender's extension user folder)."""
    return Path(bpy.utils.extension_path_user(PACKAGE, path="", create=True)).joinpath(*parts)


def backend_log_path() -> Path:
    return user_folder("backend.log")


def login_name() -> str:
    """The OS login name, the Owner's default ("" where the OS gives none)."""
    try:
        return getpass.getuser()[:64]
    except Exception:   # no USER/LOGNAME and no passwd entry (containers); Windows may raise OSError
        return ""


class DreamsculptPreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    backend_url: StringProperty(name="Backend URL", default=DEFAULT_URL,
                                description="Address of `dreamsculpt serve` (this machine: http://127.0.0.1:7323; "
                                            "a team server: https://HOST:PORT)")
    token: StringProperty(name="Token", subtype="PASSWORD",
                          description="Output of `dreamsculpt token`; leave empty to read this machine's token file")
    ca_file: StringProperty(name="CA Certificate", subtype="FILE_PATH",
                            description="PEM file of the certificate authority that signed an https team server's "
                                        "certificate (your studio's own CA, or mkcert's rootCA.pem). Empty: only "
                                        "certificates signed by a CA this system trusts are accepted")
    owner: StringProperty(name="Owner", default=login_name(), maxlen=64,
                          description="Your name on the jobs you send: a team server lists it with each job "
                                      "(default: your login name; empty: none)")
    python: StringProperty(name="Backend Python", subtype="FILE_PATH",
                           description="python executable of the environment where dreamsculpt is installed "
                                       "(empty: the `dreamsculpt` command on PATH)")
    auto_start: BoolProperty(name="Start Backend with Blender", default=False,
                             description="Start the backend when the add-on loads, if none is answering")
    vertex_colors_only: BoolProperty(name="Vertex Colours Only", default=False,
                                     description="Import meshes with their vertex colours instead of their "
                                                 "textures (no images packed into the .blend)")
    show_models: BoolProperty(name="Models", default=False,
                              description="The diffusion models on the backend: download them ahead of the first "
                                          "job, or remove them to free the space")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_url")
        if problem := url_problem(self.backend_url.strip() or DEFAULT_URL):   # empty: the default
            layout.label(text=problem, icon="ERROR")
        elif clear_text_remote(self.backend_url):
            layout.label(text="Plain http to another machine: the token crosses the network readable. "
                              "Use https://.", icon="ERROR")
        row = layout.row()
        row.prop(self, "token")
        if not self.token and is_loopback_url(self.backend_url):
            layout.label(text=f"Token read from {local_token_path()}", icon="INFO")
        layout.prop(self, "ca_file")
        layout.prop(self, "owner")
        layout.prop(self, "python")
        layout.prop(self, "auto_start")
        layout.prop(self, "vertex_colors_only")
        row = layout.row()
        row.operator("dreamsculpt.start_backend", icon="PLAY")
        row.operator("dreamsculpt.stop_backend", icon="PAUSE")
        layout.label(text=f"Backend log: {backend_log_path()}")
        box = layout.box()
        box.prop(self, "show_models", icon="TRIA_DOWN" if self.show_models else "TRIA_RIGHT", emboss=False)
        if self.show_models:   # fetched only while shown
            draw_models(box, MODELS)


def draw_models(layout, monitor: ModelsMonitor) -> None:
    """The backend's models as the monitor last fetched them (draw() never waits on HTTP)."""
    monitor.drawn_at = time.monotonic()
    monitor.refresh(max_age=1.0 if monitor.downloading else 10.0)
    row = layout.row()
    row.label(text="Diffusion models in the backend's Hugging Face cache")
    row.operator("dreamsculpt.refresh_models", text="", icon="FILE_REFRESH")
    if monitor.message:
        layout.label(text=monitor.message, icon="ERROR")
    if not monitor.models and not monitor.message:
        layout.label(text="Asking the backend…", icon="TIME")
    for model in monitor.models:
        row = layout.row()
        row.label(text=model["name"], icon="CHECKMARK" if model["state"] == "present" else "IMPORT")
        row.label(text=model_summary(model))
        if model["state"] != "present" and not model.get("download"):
            row.operator("dreamsculpt.download_model", text="Download", icon="IMPORT").name = model["name"]
        if model["state"] != "missing" and not model.get("download"):
            row.operator("dreamsculpt.remove_model", text="", icon="TRASH").name = model["name"]
        if model.get("error"):
            layout.label(text=model["error"], icon="ERROR")
        elif model.get("gated") and model["state"] != "present":
            layout.label(text=f"{model['name']}: gated on the hub; accept {model['licence']} there and run "
                              "`hf auth login` on the backend's machine first", icon="LOCKED")


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
    return Client(url, token, cafile=bpy.path.abspath(prefs.ca_file) if prefs.ca_file.strip() else "")


#: The backend's models for the preferences (model_operators.py acts on them and redraws).
MODELS = ModelsMonitor(make_client)


def job_owner(context=None) -> str:
    """Who a job is sent for (the Owner preference; "" sends none)."""
    return preferences(context).owner.strip()


def start_backend(context=None):
    prefs = preferences(context)
    return backend_process.start(bpy.path.abspath(prefs.python) if prefs.python else "",
                                 prefs.backend_url.strip() or DEFAULT_URL, backend_log_path())
