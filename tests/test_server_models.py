"""Models through a real `dreamsculpt serve` whose huggingface_hub talks to a local fake hub
(fake_hub.py) with an empty cache of its own: a job whose model is missing shows stage
"downloading" with bytes in step/total, then runs to the end; GET /models, POST
/models/{name}/download (in the background; asked twice, fetched once), DELETE /models/{name}
(409 while a job uses it or it downloads), unknown names and the token; and the add-on's
client methods and model list (model_watch.py) against these routes."""

from __future__ import annotations

import time

import pytest
from addon_modules import load
from dreamsculpt.config import DEFAULT_DEPTH_MODEL, DEFAULT_IF_MODEL, DEFAULT_SD_MODEL
from dreamsculpt.model_store import NAMES, entry, select_files
from fake_hub import IF_FILES, FakeHub, hub_env
from server_harness import ServerProcess, wait_job

pytestmark = pytest.mark.slow   # a real server process, and a job on a tiny Stable Diffusion

client_mod, model_watch = load("client"), load("model_watch")
DEPTH = {"config.json": b'{"model_type": "depth_anything"}', "preprocessor_config.json": b"{}",
         "model.safetensors": b"d" * 200_000}


@pytest.fixture(scope="module")
def hub(tiny_sd_path):
    """The tiny SD as the default SD (with a checkpoint beside it that no loader reads), a
    depth model and gated IF; each file's body comes 0.15 s late, so downloads can be watched."""
    with FakeHub(delay_s=0.15) as fake:
        fake.add_folder(DEFAULT_SD_MODEL, tiny_sd_path, extra={"v2-1_512-ema-pruned.ckpt": b"c" * 50_000})
        fake.add(DEFAULT_DEPTH_MODEL, DEPTH)
        fake.add(DEFAULT_IF_MODEL, IF_FILES, gated=True)
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("server-models")
    srv = ServerProcess(root, env=hub_env(hub.url, root / "hf")).start()
    yield srv
    srv.stop()


def _model(api, name: str) -> dict:
    return next(m for m in api.get("/models").json()["models"] if m["name"] == name)


def _wait_download(api, name: str, timeout: float = 30.0) -> tuple[dict, list[tuple[int, int]]]:
    """Poll GET /models until `name` has no download running; its status and the (done, total)
    pairs seen meanwhile."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        model = _model(api, name)
        if model["download"] is None or time.monotonic() > deadline:
            return model, seen
        seen.append((model["download"]["done"], model["download"]["total"]))
        time.sleep(0.05)


def test_a_job_downloads_its_missing_model_with_bytes_as_progress_then_runs(api, hub):
    expected = sum(select_files({p: len(d) for p, d in hub.repos[DEFAULT_SD_MODEL].files.items()},
                                entry("sd").files).values())
    job = api.post("/jobs", json={"kind": "text_to_3d", "prompt": "a red cube", "prior": "sd", "preset": "preview",
                                  "steps": 2, "resolution": 32, "mesh": {"resolution": 32, "threshold": 1.0}})
    assert job.status_code == 201, job.text
    seen, refusals = [], []

    def watch(j: dict) -> bool:
        if j["stage"] == "downloading":
            seen.append((j["step"], j["total"]))
            if not refusals:   # the job uses sd: it stays
                refusals.append(api.delete("/models/sd"))
        return j["status"] in ("done", "failed", "cancelled")

    final = wait_job(api, job.json()["id"], until=watch, poll_s=0.03, timeout=180)
    assert final["status"] == "done", final["error"]
    steps = [step for step, _ in seen]
    assert len(set(steps)) >= 3 and steps == sorted(steps), seen          # bytes going up while it downloads ...
    assert {total for _, total in seen} == {expected} and steps[-1] <= expected
    assert final["step"] == final["total"] == 2                          # ... then the run's own steps
    assert refusals[0].status_code == 409 and final["id"] in refusals[0].json()["detail"]
    sd = _model(api, "sd")
    assert sd["state"] == "present" and sd["bytes_total"] == expected and sd["download"] is None
    assert (DEFAULT_SD_MODEL, "v2-1_512-ema-pruned.ckpt") not in hub.served


def test_download_runs_in_the_background_once_and_remove_frees_it(api, hub):
    listed = api.get("/models").json()
    assert [m["name"] for m in listed["models"]] == list(NAMES) and listed["cache"].endswith("hub")
    assert _model(api, "depth")["state"] == "missing"
    started = api.post("/models/depth/download")
    assert started.status_code == 202 and started.json()["download"] is not None
    assert api.post("/models/depth/download").status_code == 202        # again while it runs: no error
    busy = api.delete("/models/depth")
    assert busy.status_code == 409 and "downloading" in busy.json()["detail"]
    depth, seen = _wait_download(api, "depth")
    size = sum(map(len, DEPTH.values()))
    assert depth["state"] == "present" and depth["bytes_on_disk"] == depth["bytes_total"] == size
    assert depth["error"] is None and seen and all(total in (0, size) for _, total in seen)
    assert all(hub.served[(DEFAULT_DEPTH_MODEL, path)] == 1 for path in DEPTH)   # asked twice, fetched once
    removed = api.delete("/models/depth")
    assert removed.status_code == 200 and removed.json() == {"name": "depth", "freed_bytes": size}
    assert _model(api, "depth")["state"] == "missing" and _model(api, "sd")["state"] == "present"


def test_a_gated_model_fails_with_how_to_get_access(api):
    assert api.post("/models/if/download").status_code == 202
    model, _ = _wait_download(api, "if")
    assert model["state"] == "missing" and model["gated"]
    assert "401" in model["error"] and "hf auth login" in model["error"] and "DeepFloyd" in model["error"]


def test_unknown_models_are_404_naming_the_known_ones_and_the_token_is_needed(api, server):
    for method, path in (("POST", "/models/sdxl/download"), ("DELETE", "/models/sdxl")):
        response = api.request(method, path)
        assert response.status_code == 404 and ", ".join(NAMES) in response.json()["detail"]
    with server.client(token=None) as anonymous:
        for method, path in (("GET", "/models"), ("POST", "/models/sd/download"), ("DELETE", "/models/sd")):
            assert anonymous.request(method, path).status_code == 401


def test_the_addons_client_and_model_list_use_these_routes(server):
    client = client_mod.Client(server.url, server.token)
    assert [m["name"] for m in client.models()] == list(NAMES)
    assert client.download_model("depth")["name"] == "depth"
    monitor = model_watch.ModelsMonitor(lambda: client)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        monitor.refresh(force=True)
        monitor._thread.join()
        depth = next(m for m in monitor.models if m["name"] == "depth")
        if depth["state"] == "present" and not monitor.downloading:
            break
        time.sleep(0.05)
    assert model_watch.model_summary(depth) == "present · 200 kB" and monitor.message == ""
    assert client.remove_model("depth") == sum(map(len, DEPTH.values()))
    with pytest.raises(client_mod.Rejected, match="No model 'sdxl'") as refused:
        client.download_model("sdxl")
    assert refused.value.status == 404
    monitor.dirty = False
    monitor.act(lambda c: c.remove_model("sd-inpaint"))   # not there: freed 0, and the list again
    deadline = time.monotonic() + 10
    while not monitor.dirty and time.monotonic() < deadline:
        time.sleep(0.02)
    assert monitor.message == "" and next(m for m in monitor.models if m["name"] == "depth")["state"] == "missing"
