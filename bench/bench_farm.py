"""A studio's farm on this machine: jobs per hour with one and two local workers
(`serve --devices cpu` / `cpu,cpu`) and with the Ray executor on a local Ray cluster with two
fake GPU slots; Ray's own overhead per job, and the memory of Ray's processes.

    .venv/bin/python bench/bench_farm.py                     # CI-sized x6 and standard x2, ~10 min
    .venv/bin/python bench/bench_farm.py --standard 0        # CI-sized jobs only, ~2 min

Each configuration gets a fresh server; two warm-up jobs (one per worker) load torch and the
built-in shapes first, then the clock runs from the first job's start to the last one's end.
On a 2-core machine two workers split the cores (one thread each), so they beat one worker
only where a single job does not keep both cores busy; on a GPU farm each worker has its own
device. The machine is checked to be quiet before each row (others under 0.25 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from ray_harness import LocalRay, _in_session  # noqa: E402
from server_harness import ServerProcess, tiny_job, wait_job  # noqa: E402
from tables import code_version, machine, markdown_table, wait_until_quiet  # noqa: E402

STANDARD = {"kind": "text_to_3d", "prompt": "a red cube", "prior": "builtin", "preset": "standard"}


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def run_config(root: Path, args: list[str], jobs: list[dict], workers: int) -> dict:
    server = ServerProcess(root, *args, "--idle-release", "0").start(timeout=120)
    try:
        server.wait_health(lambda h: len(h["workers"]) == workers and
                           all(w["state"] == "idle" for w in h["workers"]), timeout=120)
        with server.client() as api:
            warm = [api.post("/jobs", json=tiny_job(seed=100 + i)).json()["id"] for i in range(workers)]
            [wait_job(api, j, timeout=600) for j in warm]
            ids = [api.post("/jobs", json=job).json()["id"] for job in jobs]
            done = [wait_job(api, j, timeout=3600, poll_s=0.5) for j in ids]
            workers = rss_mb([w["pid"] for w in api.get("/health").json()["workers"] if w["pid"]])
        assert all(j["status"] == "done" for j in done), [j["error"] for j in done]
        wall = max(_time(j["finished"]) for j in done) - min(_time(j["started"]) for j in done)
        # Ray: seconds from the dispatcher handing a job over to its task's first word (Hello).
        overhead = []
        for job in done:
            events = server.data_dir / "jobs" / job["id"] / "events.jsonl"
            if events.is_file():
                first = json.loads(events.read_text().splitlines()[0])
                overhead.append(first["t"] - _time(job["started"]))
        return {"wall": wall, "per_hour": len(jobs) / wall * 3600, "overhead": overhead, "workers_mb": workers,
                "engine": statistics.median(j["result"]["seconds"] for j in done)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", type=int, default=6, help="CI-sized jobs per configuration")
    parser.add_argument("--standard", type=int, default=2, help="standard built-in jobs per configuration (0: none)")
    parser.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait for a quiet machine per row")
    args = parser.parse_args()
    print(f"{machine()}; {code_version()}\n")
    batches = [("CI-sized", [tiny_job(seed=i) for i in range(args.ci)])]
    if args.standard:
        batches.append(("standard", [dict(STANDARD, seed=i) for i in range(args.standard)]))
    rows, ray_notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        cluster = LocalRay(gpus=2, cpus=2).start()
        try:
            session = cluster.process.pid
            daemons = rss_mb(_in_session(session))
            ray_notes.append(f"Ray's daemons right after `ray start` (the CLI, GCS, raylet, monitors, dashboard "
                             f"and runtime-env agents; {len(_in_session(session))} processes): {daemons:.0f} MB RSS")
            configs = [("1 local worker (every core)", ["--devices", "cpu"], 1),
                       ("2 local workers (a core each)", ["--devices", "cpu,cpu"], 2),
                       ("Ray, 2 GPU slots (a core each)", ["--executor", "ray", "--ray-address", cluster.address], 2)]
            for kind, jobs in batches:
                for name, options, workers in configs:
                    wait_until_quiet(args.wait_quiet)
                    result = run_config(Path(tmp) / f"{kind}-{workers}-{len(rows)}", options, jobs, workers)
                    rows.append([kind, name, len(jobs), f"{result['wall']:.1f}", f"{result['per_hour']:.0f}",
                                 f"{result['engine']:.1f}", f"{result['workers_mb']:.0f}"])
                    if result["overhead"]:
                        o = result["overhead"]
                        ray_notes.append(f"Ray overhead per job ({kind}, {len(o)} jobs): median {statistics.median(o):.3f} s, "
                                         f"max {max(o):.3f} s from hand-over to the task's first event")
                    print(f"  {kind} / {name}: {result['wall']:.1f} s", file=sys.stderr, flush=True)
            ray_notes.append(f"Ray's daemons after the runs: {rss_mb(_in_session(session)):.0f} MB RSS (the task "
                             "workers, which hold torch and the models, are in the table and end with the server)")
        finally:
            cluster.stop()
    print(markdown_table(["jobs", "executor", "count", "wall s", "jobs/hour", "median s per job",
                          "workers' RSS MB"], rows))
    print()
    for note in ray_notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
