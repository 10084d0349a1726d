"""The job server's cost: the same built-in job through the CLI and through `dreamsculpt serve`,
and how fast `GET /jobs/{id}` answers while a job keeps both cores busy.

    .venv/bin/python bench/bench_server.py                       # preview preset, ~2 minutes
    .venv/bin/python bench/bench_server.py --preset standard --repeats 1
    .venv/bin/python bench/bench_server.py --wait-quiet 600

Rows of the first table (wall seconds, prompt "a red cube", built-in prior, shape library
already cached on disk):
- CLI: `dreamsculpt generate` as a new process, start to exit (interpreter, torch import,
  library load, run, mesh, files).
- server, worker cold: a server just started; POST /jobs to status done (the worker is
  still importing torch when the job arrives). Polled every 0.25 s, as a UI would: the
  wall time includes up to 0.25 s of poll interval.
- server, worker warm: the next job on the same server (models kept in the worker).
Second table: latency of GET /jobs/{id} during a run, polled every 20 ms, with one kept-alive
connection (httpx) and with a new connection per request (urllib, like the Blender add-on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from server_harness import ServerProcess, wait_job  # noqa: E402
from tables import code_version, machine, markdown_table, wait_until_quiet  # noqa: E402

TARGET_P99_MS = 50.0
PROMPT = "a red cube"


def cli_run(preset: str, steps: int | None, out: Path, env: dict) -> tuple[float, float]:
    """(wall seconds of the process, engine seconds from run.json)."""
    command = [sys.executable, "-m", "dreamsculpt", "generate", PROMPT, "--prior", "builtin", "--preset", preset,
               "--out", str(out), "--quiet"] + (["--steps", str(steps)] if steps else [])
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "run.json").read_text())["seconds"]


def job_body(preset: str, steps: int | None) -> dict:
    body = {"kind": "text_to_3d", "prompt": PROMPT, "prior": "builtin", "preset": preset}
    return body | ({"steps": steps} if steps else {})


def server_run(api: httpx.Client, preset: str, steps: int | None, poll_s: float = 0.25) -> tuple[float, float]:
    start = time.perf_counter()
    job_id = api.post("/jobs", json=job_body(preset, steps)).json()["id"]
    job = wait_job(api, job_id, ("done", "failed"), timeout=3600, poll_s=poll_s)
    if job["status"] != "done":
        raise RuntimeError(job["error"])
    return time.perf_counter() - start, job["result"]["seconds"]


def latencies(server: ServerProcess, preset: str, steps: int | None) -> dict[str, list[float]]:
    """Poll GET /jobs/{id} every 20 ms while the job runs, alternating the two clients."""
    samples = {"kept-alive connection (httpx)": [], "new connection per request (urllib)": []}
    with server.client() as api:
        job_id = api.post("/jobs", json=job_body(preset, steps)).json()["id"]
        wait_job(api, job_id, until=lambda j: j["status"] == "running" and j["step"] > 0)
        request = urllib.request.Request(f"{server.url}/jobs/{job_id}",
                                         headers={"Authorization": f"Bearer {server.token}"})
        while True:
            for name in samples:
                t0 = time.perf_counter()
                if name.startswith("kept"):
                    status = api.get(f"/jobs/{job_id}").json()["status"]
                else:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        status = json.loads(reply.read())["status"]
                samples[name].append(1e3 * (time.perf_counter() - t0))
                time.sleep(0.02)
            if status != "running":
                return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--steps", type=int, help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement, wait up to this long for a quiet machine")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    env = {**os.environ, "DREAMSCULPT_CACHE_DIR": os.environ.get("DREAMSCULPT_CACHE_DIR", str(work / "cache"))}
    os.environ.update(env)
    cli_run(args.preset, 1, work / "warm-cache", env)  # render the shape library once, off the clock
    quiet = lambda: args.wait_quiet and wait_until_quiet(args.wait_quiet)  # noqa: E731

    rows: dict[str, list[tuple[float, float]]] = {"CLI (new process)": [], "server, worker cold": [],
                                                  "server, worker warm": []}
    for r in range(args.repeats):
        quiet()
        rows["CLI (new process)"].append(cli_run(args.preset, args.steps, work / f"cli-{r}", env))
        quiet()
        server = ServerProcess(work / f"server-{r}", env=env).start()
        try:
            with server.client() as api:
                rows["server, worker cold"].append(server_run(api, args.preset, args.steps))
                quiet()
                rows["server, worker warm"].append(server_run(api, args.preset, args.steps))
        finally:
            server.stop()
    cli_wall = float(np.mean([w for w, _ in rows["CLI (new process)"]]))
    table = []
    for name, runs in rows.items():
        wall, engine = float(np.mean([w for w, _ in runs])), float(np.mean([e for _, e in runs]))
        table.append([name, f"{wall:.2f}", f"{engine:.2f}", f"{wall - engine:.2f}", f"{wall / cli_wall:.2f}"])

    quiet()
    server = ServerProcess(work / "server-latency", env=env).start()
    try:
        server.wait_health(lambda h: h["worker"] == "idle")
        samples = latencies(server, args.preset, args.steps)
    finally:
        server.stop()
    lat_rows = []
    for name, values in samples.items():
        v = np.array(values)
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        lat_rows.append([name, len(v), f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{v.max():.1f}",
                         "met" if p99 < TARGET_P99_MS else "MISSED"])

    steps = f"{args.steps} steps" if args.steps else "the preset's steps"
    print(f"# Server vs CLI: '{PROMPT}', builtin prior, preset {args.preset} ({steps}), mean of {args.repeats}")
    print(f"{machine()}; {code_version()}\n")
    print(markdown_table(["path", "wall s", "engine s (run.json)", "overhead s", "ratio to CLI"], table))
    print(f"\n# GET /jobs/{{id}} while a job runs (target p99 < {TARGET_P99_MS:.0f} ms)\n")
    print(markdown_table(["client", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", "target"], lat_rows))


if __name__ == "__main__":
    main()
