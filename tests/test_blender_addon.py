"""The add-on inside real Blender 5.0 (the bpy module), each test in a fresh process with its
own Blender user folders: install from the built zip, generate against a real server,
undo, errors, and the panel's draw() in every backend state."""

from __future__ import annotations

import pytest
from blender_harness import requires_bpy, run_in_blender, script
from test_blender_assets import RENDER_FRONT

import build_addon

pytestmark = [requires_bpy, pytest.mark.slow]   # Blender, and a real server


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> str:
    return str(build_addon.build(tmp_path_factory.mktemp("dist")))


def test_zip_installs_registers_and_uninstalls(addon_zip, tmp_path):
    out = run_in_blender(f'''
        module = install({addon_zip!r})
        registered = {{
            "scene_property": hasattr(bpy.types.Scene, "dreamsculpt"),
            "operators": [hasattr(bpy.ops.dreamsculpt, name) for name in ("generate", "cancel", "start_backend",
                          "history_import", "history_rerun", "history_copy_prompt", "history_delete")],
            "panels": [hasattr(bpy.types, name) for name in ("VIEW3D_PT_dreamsculpt", "VIEW3D_PT_dreamsculpt_advanced",
                       "VIEW3D_PT_dreamsculpt_history")],
            "settings": [name in bpy.context.scene.dreamsculpt.bl_rna.properties for name in
                         ("prompt", "negative", "prior", "model", "seed", "preset", "steps", "guidance_scale",
                          "mesh_resolution", "threshold", "history", "mode", "image_source", "image_path",
                          "image_prior", "zero123_model", "view_count", "autoregressive", "view_planes",
                          "size", "origin", "texture_size", "normal_map", "max_faces", "refine_mode",
                          "refine_steps")],
            "enabled": "bl_ext.user_default.dreamsculpt" in bpy.context.preferences.addons,
        }}
        status = bpy.ops.extensions.package_uninstall(repo_index=1, pkg_id="dreamsculpt")
        after = {{"scene_property": hasattr(bpy.types.Scene, "dreamsculpt"),
                 "operator": "generate" in dir(bpy.ops.dreamsculpt),
                 "panel": hasattr(bpy.types, "VIEW3D_PT_dreamsculpt"),
                 "enabled": "bl_ext.user_default.dreamsculpt" in bpy.context.preferences.addons}}
        result(registered=registered, status=list(status), after=after)
    ''', tmp_path)
    r = out["registered"]
    assert r["scene_property"] and all(r["operators"]) and all(r["panels"]) and all(r["settings"]) and r["enabled"]
    assert out["status"] == ["FINISHED"]
    assert out["after"] == {"scene_property": False, "operator": False, "panel": False, "enabled": False}


def _server_env(server) -> dict:
    """The Blender process sees the server's config folder, so the add-on reads its token."""
    return {"XDG_CONFIG_HOME": str(server.root / "config")}


SET_UP_JOB = '''
    prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
    prefs.backend_url = {url!r}
    s = bpy.context.scene.dreamsculpt
    s.prompt, s.prior, s.preset, s.seed = "a red cube", "builtin", "preview", 3
    s.steps, s.mesh_resolution, s.threshold, s.origin = 60, 32, 1.0, "bottom"
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    bpy.ops.ed.undo_push(message="before Dreamsculpt")
    objects_before = sorted(o.name for o in bpy.data.objects)
'''

DESCRIBE_RESULT = '''
    def describe(obj):
        mesh = obj.data
        colors = mesh.color_attributes.get("Color")
        material = mesh.materials[0] if mesh.materials else None
        nodes = material.node_tree.nodes if material else []
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        base = bsdf.inputs["Base Color"].links[0].from_node if bsdf and bsdf.inputs["Base Color"].is_linked else None
        red = [0.0, 0.0, 0.0, 0.0]
        if colors is not None:
            values = [0.0] * (4 * len(colors.data))
            colors.data.foreach_get("color", values)
            for i in range(4):
                red[i] = sum(values[i::4]) / len(colors.data)
        return {"name": obj.name, "vertices": len(mesh.vertices), "faces": len(mesh.polygons),
                "color_type": colors.data_type if colors else None, "color_domain": colors.domain if colors else None,
                "mean_color": red, "material": material.name if material else None,
                "base": base.type if base else None,
                "base_packed": bool(base and base.type == "TEX_IMAGE" and base.image.packed_file),
                "uv_maps": [uv.name for uv in mesh.uv_layers],
                "lowest_z": min((obj.matrix_world @ v.co).z for v in mesh.vertices),
                "collection": [c.name for c in obj.users_collection], "location": list(obj.location),
                "props": {k: obj[k] for k in obj.keys() if k.startswith("dreamsculpt")}}
'''


def test_generate_with_the_timer_imports_a_coloured_mesh_and_undo_removes_it(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        timer, watchers = addon_module("timer"), addon_module("watchers")
    ''', SET_UP_JOB.format(url=server.url), DESCRIBE_RESULT, RENDER_FRONT, f'''
        front_png = {str(tmp_path / "front.png")!r}
    ''', '''
        status = bpy.ops.dreamsculpt.generate(wait="NO")
        job_id = s.job_id
        ticks, seen_running, deadline = [], False, time.monotonic() + 120
        while watchers.WATCHERS and time.monotonic() < deadline:
            t0 = time.perf_counter()
            timer.tick()
            ticks.append(1e3 * (time.perf_counter() - t0))
            seen_running = seen_running or s.job_status == "running"
            time.sleep(0.05)
        new = [o for o in bpy.data.objects if o.name not in objects_before]
        imported = describe(new[0]) if new else None
        centre = render_front(front_png, (1.0, 2.0, 3.0)) if new else None
        entry = s.history[0]
        history = {"job_id": entry.job_id, "prompt": entry.prompt, "seed": entry.seed, "status": entry.status,
                   "object": entry.object_name}
        preview = s.preview_image
        bpy.ops.ed.undo()
        after_undo = sorted(o.name for o in bpy.data.objects)
        result(status=list(status), job_id=job_id, imported=imported, count=len(new), history=history,
               ticks=ticks, after_undo=after_undo, objects_before=objects_before, seen_running=seen_running,
               preview=preview, centre=centre)
    '''), tmp_path, _server_env(server))
    assert out["status"] == ["FINISHED"] and out["count"] == 1
    obj = out["imported"]
    assert obj["vertices"] > 100 and obj["faces"] > 100
    assert obj["color_type"] == "FLOAT_COLOR" and obj["color_domain"] == "POINT"
    r, g, b, a = obj["mean_color"]
    assert r > 2 * g and r > 2 * b and a == pytest.approx(1.0)        # a red cube is red
    # A UV-textured asset: its texture (packed) feeds the Base Color; it stands on the cursor.
    assert obj["uv_maps"] == ["UVMap"] and obj["base"] == "TEX_IMAGE" and obj["base_packed"]
    assert obj["collection"] == ["Dreamsculpt"] and obj["name"].startswith("a red cube")
    assert obj["location"] == pytest.approx([1.0, 2.0, 3.0])           # at the 3D cursor ...
    assert obj["lowest_z"] == pytest.approx(3.0, abs=1e-5)              # ... standing on it (origin bottom)
    r, g, b = out["centre"]                                             # Cycles, from the front
    assert r > 0.2 and r > 2 * g and r > 2 * b, out["centre"]
    assert obj["props"] == {"dreamsculpt_job_id": out["job_id"], "dreamsculpt_prompt": "a red cube",
                            "dreamsculpt_seed": 3, "dreamsculpt_model": "builtin"}
    assert out["history"] == {"job_id": out["job_id"], "prompt": "a red cube", "seed": 3, "status": "done",
                              "object": obj["name"]}
    assert out["after_undo"] == out["objects_before"]                  # undo removes it
    assert len(out["ticks"]) > 3 and out["seen_running"]
    assert out["preview"] == out["job_id"]                              # the live preview was shown


def test_headless_generate_waits_and_prints_progress(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', SET_UP_JOB.format(url=server.url), '''
        prefs.owner = "Ada Lovelace"                      # who the team server lists as the job's sender
        status = bpy.ops.dreamsculpt.generate()          # bpy.app.background: waits for the job
        new = [o for o in bpy.data.objects if o.name not in objects_before]
        result(status=list(status), new=[o.name for o in new], faces=len(new[0].data.polygons) if new else 0,
               background=bpy.app.background, job_id=s.history[-1].job_id)
    '''), tmp_path, _server_env(server))
    assert out["background"] and out["status"] == ["FINISHED"]
    assert len(out["new"]) == 1 and out["faces"] > 100
    with server.client() as c:
        assert c.get(f"/jobs/{out['job_id']}").json()["request"]["owner"] == "Ada Lovelace"
    assert "Dreamsculpt" in out["_stdout"] and "/60" in out["_stdout"]    # progress lines, step/total


def test_a_failed_job_is_reported_and_nothing_is_imported(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', SET_UP_JOB.format(url=server.url), '''
        s.prompt = "a dragon"
        error = error_of(bpy.ops.dreamsculpt.generate)
        result(error=error, objects=sorted(o.name for o in bpy.data.objects) == objects_before,
               status=s.history[0].status, entry_error=s.history[0].error)
    '''), tmp_path, _server_env(server))
    assert out["error"] and "No built-in shape matches" in out["error"]
    assert out["objects"] and out["status"] == "failed" and "Try" in out["entry_error"]


def test_backend_not_running_is_an_actionable_error_and_the_scene_is_unchanged(addon_zip, tmp_path):
    out = run_in_blender(f'''
        install({addon_zip!r})
        prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
        prefs.backend_url = "http://127.0.0.1:9"      # discard port: nothing listens
        before = (sorted(o.name for o in bpy.data.objects), len(bpy.context.scene.dreamsculpt.history))
        error = error_of(bpy.ops.dreamsculpt.generate)
        after = (sorted(o.name for o in bpy.data.objects), len(bpy.context.scene.dreamsculpt.history))
        result(error=error, unchanged=before == after)
    ''', tmp_path)
    assert out["error"] and "not answering" in out["error"] and "Start backend" in out["error"]
    assert out["unchanged"]


def test_remote_backend_needs_online_access(addon_zip, tmp_path):
    out = run_in_blender(f'''
        install({addon_zip!r})
        prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
        prefs.backend_url = "http://192.0.2.10:7323"
        error = error_of(bpy.ops.dreamsculpt.generate)
        result(error=error, online=bpy.app.online_access)
    ''', tmp_path)
    assert out["online"] is False and "Allow Online Access" in out["error"]


def test_panel_draw_runs_in_every_backend_state(addon_zip, tmp_path):
    """draw() against a recording layout that checks each call against Blender's own UILayout
    RNA (method names, keyword names, and that prop() names a real property)."""
    out = run_in_blender(f'''
        install({addon_zip!r})
        timer, watchers, panels = addon_module("timer"), addon_module("watchers"), addon_module("panels")
        client = addon_module("client")
        functions = bpy.types.UILayout.bl_rna.functions
        calls = []

        class Layout:
            def __getattr__(self, name):
                if name not in functions:
                    raise AttributeError(f"UILayout has no {{name}}")
                allowed = {{p.identifier for p in functions[name].parameters}}

                def call(*args, **kwargs):
                    unknown = set(kwargs) - allowed
                    assert not unknown, (name, unknown)
                    if name == "prop":
                        data, prop = args[0], args[1]
                        assert prop in data.bl_rna.properties, prop
                    if name == "operator":
                        category, op = args[0].split(".")
                        assert hasattr(getattr(bpy.ops, category), op), args[0]
                    calls.append(name)
                    return Operand() if name == "operator" else Layout()
                return call

            def __setattr__(self, name, value):
                assert name in bpy.types.UILayout.bl_rna.properties, name

        class Operand:
            def __setattr__(self, name, value):
                pass

        class Drawn:
            def __init__(self):
                self.layout = Layout()

        s = bpy.context.scene.dreamsculpt
        for mode in ("text_to_3d", "image_to_3d", "novel_views", "scene_walk"):
            entry = s.history.add()
            entry.job_id, entry.prompt, entry.status, entry.error = "20261121-093512-4f2a9c", "a cube", "failed", "why"
            entry.mode, entry.source = mode, "Camera"
        s.history_index = 0
        camera = bpy.context.scene.camera
        drawn = []
        states = ["checking", "connected", "not_running", "wrong_token", "untrusted", "version_mismatch", "offline",
                  "error"]
        # (mode, text prior or image prior, image source, camera type or None for no camera)
        combos = [("text_to_3d", "builtin", "CAMERA", "PERSP"), ("text_to_3d", "sd", "CAMERA", "PERSP"),
                  ("text_to_3d", "references", "CAMERA", "PERSP"), ("image_to_3d", "builtin", "CAMERA", "PERSP"),
                  ("image_to_3d", "zero123", "FILE", "PERSP"), ("image_to_3d", "zero123", "CAMERA", "ORTHO"),
                  ("novel_views", "builtin", "CAMERA", None), ("novel_views", "zero123", "FILE", "PERSP"),
                  ("scene_walk", "builtin", "CAMERA", "PERSP"), ("scene_walk", "sd", "CAMERA", None),
                  ("scene_walk", "references", "CAMERA", "ORTHO")]
        for kind in states:
            for index, (mode, prior, source, camera_type) in enumerate(combos):
                for running in (False, True):
                    timer.MONITOR.state = client.BackendState(kind, "a message " * 12,
                                                              {{"device": "cpu", "models": ["m"], "queue": 2}})
                    timer.MONITOR.checked_at = time.monotonic()    # no refresh thread
                    s.mode, s.image_source, s.last_error = mode, source, ("an error" if running else "")
                    if mode in ("text_to_3d", "scene_walk"):
                        s.prior = prior
                    else:
                        s.image_prior = prior
                    s.view_planes = s.autoregressive = running
                    s.refine_mode = "CUSTOM" if running else "PRESET"    # Refine Steps shown or not
                    s.walk_path = "PRESET" if running else "ANIMATION"   # the scene walk's two paths
                    s.walk_start = "PROMPT" if running else "RENDER"
                    bpy.context.scene.camera = camera if camera_type else None
                    camera.data.type = camera_type or "PERSP"
                    s.history_index = index % 4
                    s.job_id = "20261121-093512-4f2a9c" if running else ""
                    if running:
                        watchers.WATCHERS[s.job_id] = (None, bpy.context.scene.name)
                        s.job_total, s.job_step, s.job_eta = 100, 40, 12.0
                    for panel in (panels.VIEW3D_PT_dreamsculpt, panels.VIEW3D_PT_dreamsculpt_advanced,
                                  panels.VIEW3D_PT_dreamsculpt_history):
                        panel.draw(Drawn(), bpy.context)
                    entry = s.history[s.history_index]
                    panels.DREAMSCULPT_UL_history.draw_item(None, bpy.context, Layout(), s, entry, 0, s,
                                                            "history_index", 0)
                    watchers.WATCHERS.clear()
                    drawn.append(kind)
        prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences

        class Shown:   # the preferences, drawn into the recording layout
            def __init__(self):
                self.__dict__["layout"] = Layout()

            def __getattr__(self, name):
                return getattr(prefs, name)

        warnings = []
        for url in ("http://127.0.0.1:7323", "https://render.studio.lan:7323", "http://192.0.2.10:7323", "ftp://x"):
            prefs.backend_url, before = url, len(calls)
            type(prefs).draw(Shown(), bpy.context)
            warnings.append(calls[before:].count("label"))
        import getpass
        result(drawn=len(drawn), calls=sorted(set(calls)), warnings=warnings, owner=prefs.owner,
               login=getpass.getuser())
    ''', tmp_path)
    assert out["drawn"] == 8 * 11 * 2
    # The token's source (local only), the log; plain http to another machine, or no URL at all, adds one.
    assert out["warnings"] == [2, 1, 2, 2]
    assert out["owner"] == out["login"]
    assert {"prop", "operator", "label", "box", "progress", "template_list"} <= set(out["calls"])


def test_history_import_again_rerun_copy_prompt_and_delete(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', SET_UP_JOB.format(url=server.url), '''
        bpy.ops.dreamsculpt.generate()
        first = s.history[0]
        first_object = first.object_name
        s.replace_previous = True
        bpy.ops.dreamsculpt.history_import(index=0)          # replaces the object it made before
        replaced = (first_object not in bpy.data.objects, first.object_name in bpy.data.objects)
        s.prompt, s.seed = "something else", 99
        bpy.ops.dreamsculpt.history_copy_prompt(index=0)
        copied = (s.prompt, s.seed)
        bpy.ops.dreamsculpt.history_rerun(index=0, new_seed=False)
        bpy.ops.dreamsculpt.history_rerun(index=0, new_seed=True)
        runs = [(e.prompt, e.seed, e.status) for e in s.history]
        job_id = s.history[0].job_id
        bpy.ops.dreamsculpt.history_delete(index=0)
        result(replaced=replaced, copied=copied, runs=runs, left=[e.job_id for e in s.history], deleted=job_id,
               objects=len([o for o in bpy.data.objects if o.get("dreamsculpt_job_id")]))
    '''), tmp_path, _server_env(server))
    assert out["replaced"] == [True, True]
    assert out["copied"] == ["a red cube", 3]
    (p0, s0, st0), (p1, s1, st1), (p2, s2, st2) = out["runs"]
    assert p0 == p1 == p2 == "a red cube" and s0 == s1 == 3 and s2 != 3
    assert st0 == st1 == st2 == "done"
    assert len(out["left"]) == 2 and out["deleted"] not in out["left"]
    with server.client() as api:
        assert api.get(f"/jobs/{out['deleted']}").status_code == 404     # gone from the backend too
    assert out["objects"] == 3


def test_cancel_from_the_panel_stops_the_job_and_imports_nothing(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        timer, watchers = addon_module("timer"), addon_module("watchers")
    ''', SET_UP_JOB.format(url=server.url), '''
        s.steps = 5000
        bpy.ops.dreamsculpt.generate(wait="NO")
        deadline = time.monotonic() + 60
        while s.job_step < 3 and time.monotonic() < deadline:
            timer.tick()
            time.sleep(0.05)
        cancel = bpy.ops.dreamsculpt.cancel()
        while watchers.WATCHERS and time.monotonic() < deadline + 60:
            timer.tick()
            time.sleep(0.05)
        result(cancel=list(cancel), status=s.history[0].status, running=s.job_id,
               unchanged=sorted(o.name for o in bpy.data.objects) == objects_before)
    '''), tmp_path, _server_env(server))
    assert out["cancel"] == ["FINISHED"] and out["status"] == "cancelled"
    assert out["running"] == "" and out["unchanged"]
