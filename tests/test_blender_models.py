"""The add-on's model list in real Blender 5.0 (the bpy module): its operators and timer are
registered, the preferences draw the backend's models in every state (a download in bytes, an
error, a gated model) and the panel's progress reads "Downloading 1.2 / 4.9 GB" while a job
downloads. Drawn into a recording layout checked against Blender's own UILayout RNA; the
model list is set by hand, so no backend is needed."""

from __future__ import annotations

import pytest
from blender_harness import requires_bpy, run_in_blender

import build_addon

pytestmark = [requires_bpy, pytest.mark.slow]   # Blender


def test_preferences_draw_the_models_and_the_panel_reads_bytes_while_downloading(tmp_path):
    addon_zip = str(build_addon.build(tmp_path / "dist"))
    out = run_in_blender(f'''
        install({addon_zip!r})
        preferences, panels = addon_module("preferences"), addon_module("panels")
        functions = bpy.types.UILayout.bl_rna.functions
        texts = []

        class Layout:
            def __getattr__(self, name):
                if name not in functions:
                    raise AttributeError(f"UILayout has no {{name}}")
                allowed = {{p.identifier for p in functions[name].parameters}}

                def call(*args, **kwargs):
                    assert not set(kwargs) - allowed, (name, kwargs)
                    if name == "operator":
                        category, op = args[0].split(".")
                        assert hasattr(getattr(bpy.ops, category), op), args[0]
                    if name == "prop":
                        assert args[1] in args[0].bl_rna.properties, args[1]
                    texts.append(kwargs.get("text", ""))
                    return Layout()
                return call

            def __setattr__(self, name, value):
                assert name in bpy.types.UILayout.bl_rna.properties or name == "name", name

        prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences

        class Shown:
            def __init__(self):
                self.__dict__["layout"] = Layout()

            def __getattr__(self, name):
                return getattr(prefs, name)

        def model(name, state, on_disk=0, total=None, download=None, error=None, gated=False):
            return {{"name": name, "state": state, "bytes_on_disk": on_disk, "bytes_total": total,
                     "download": download, "error": error, "gated": gated, "licence": "its licence"}}

        monitor = preferences.MODELS
        monitor.models = [model("sd", "present", 5_210_000_000, 5_210_000_000),
                          model("mvdream", "partial", 1_200_000_000, 4_900_000_000,
                                download={{"done": 1_200_000_000, "total": 4_900_000_000}}),
                          model("if", "missing", gated=True), model("depth", "missing", error="no network")]
        monitor.checked_at = time.monotonic()   # fresh: no fetch thread
        prefs.show_models = False
        type(prefs).draw(Shown(), bpy.context)
        closed = len(texts)
        prefs.show_models = True
        type(prefs).draw(Shown(), bpy.context)
        prefs_texts = texts[closed:]

        s = bpy.context.scene.dreamsculpt
        s.job_stage, s.job_status = "downloading", "running"
        s.job_step, s.job_total, s.job_eta = 1_200_000_000 // 1024, 4_900_000_000 // 1024, 0.0
        del texts[:]
        panels.draw_progress(Layout(), s)
        downloading = list(texts)
        s.job_stage, s.job_step, s.job_total = "optimising", 40, 100
        del texts[:]
        panels.draw_progress(Layout(), s)
        prefs.backend_url = "http://127.0.0.1:9"   # nothing answers: the button's request fails on its thread
        monitor.dirty = False
        pressed = bpy.ops.dreamsculpt.download_model(name="sd")
        deadline = time.monotonic() + 20
        while not monitor.dirty and time.monotonic() < deadline:
            time.sleep(0.02)
        result(prefs=prefs_texts, downloading=downloading, optimising=list(texts), pressed=list(pressed),
               message=monitor.message, listed=len(monitor.models),
               operators=[hasattr(bpy.ops.dreamsculpt, n) for n in ("download_model", "remove_model",
                                                                     "refresh_models")],
               timer=bpy.app.timers.is_registered(addon_module("model_operators").models_tick),
               fetched=monitor._thread is not None)
    ''', tmp_path)
    assert out["operators"] == [True, True, True] and out["timer"] and not out["fetched"]
    shown = out["prefs"]
    assert "present · 5.2 GB" in shown and "downloading 1.2 / 4.9 GB" in shown and "no network" in shown
    assert shown.count("Download") == 2                     # if and depth; not sd, not the one downloading
    assert any("gated on the hub" in text for text in shown)
    assert "Downloading 1.2 / 4.9 GB" in out["downloading"]
    assert "optimising 40/100" in out["optimising"]
    assert out["pressed"] == ["FINISHED"] and "not answering" in out["message"] and out["listed"] == 0
