"""Scene walks on the offline prior: seconds per frame by stage, and the scene mesh's size and
the process's memory as the walk grows.

A walk through the built-in table room from its render and depth at the first camera: forward
0.06 m a frame while turning 1.5 degrees, back and forth along the room (the path turns round
at its ends, so a long walk keeps seeing the same room, as a long camera move does), at each
--resolution (the longer side, 4:3 frames). Stages: render (the scene from the new camera and
its holes), inpainting and depth (the closed-form prior: the set's nearest frames warped into
the camera), fusing (alignment, new triangles, the face budget). Memory is the resident set
after the frame (ru_maxrss: the peak so far).

    .venv/bin/python bench/bench_scene_walk.py                          # 256 and 512 px, 20 and 100 frames
    .venv/bin/python bench/bench_scene_walk.py --resolution 256 --frames 20
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections import defaultdict

import torch
from dreamsculpt.cameras import Pinhole
from dreamsculpt.scenes.room_prior import RoomSet, SetPrior, look_at, look_direction
from dreamsculpt.scenes.rooms import ROOMS
from dreamsculpt.scenes.scene_mesh import render_mesh
from dreamsculpt.scenes.walk import WalkSettings, WalkState, next_frame, start_frame

FOV_DEG = 60.0


def path(frames: int, width: int, height: int) -> list[Pinhole]:
    """Back and forth across the table room, 0.06 m and 1.5 degrees a frame, turning round at
    the ends of a 2.4 m run."""
    focal = 0.5 * width / math.tan(math.radians(FOV_DEG / 2))
    cameras, position, heading = [], torch.tensor([-1.5, -1.2, 1.5]), 35.0
    for k in range(frames):
        leg = (k // 40) % 2                            # 40 frames one way, then 40 back
        heading_now = heading - 1.5 * (k % 40) + 180.0 * leg
        c2w = look_at(position, look_direction(heading_now, -10.0))
        cameras.append(Pinhole(c2w[None], torch.tensor([focal]), torch.tensor([[width / 2, height / 2]]), width, height))
        step = look_direction(heading_now, 0.0) * 0.06
        position = position + step
    return cameras


def walk(resolution: int, frames: int, report_at: tuple[int, ...]) -> list[dict]:
    width, height = resolution, resolution * 3 // 4
    room = ROOMS["table room"]
    cameras = path(frames, width, height)
    prior = SetPrior(RoomSet(room, width, height, float(cameras[0].focal[0])), "table room", seed=0)
    state, settings = WalkState(), WalkSettings("a room with a red table")
    first = render_mesh(room.mesh(), cameras[0])
    start_frame(state, cameras[0], first.rgb[0], first.depth[0], prior, prior, settings, torch.Generator())
    seconds: dict[str, float] = defaultdict(float)
    rows = []
    for k, camera in enumerate(cameras[1:], start=1):
        clock = {"stage": "render", "t": time.perf_counter()}

        def on_stage(name: str) -> None:
            now = time.perf_counter()
            seconds[clock["stage"]] += now - clock["t"]
            clock.update(stage=name, t=now)

        next_frame(state, camera, prior, prior, settings, torch.Generator().manual_seed(k), on_stage)
        seconds[clock["stage"]] += time.perf_counter() - clock["t"]
        if k + 1 in report_at:
            per = {s: seconds[s] / k for s in ("render", "inpainting", "depth", "fusing")}
            rows.append({"px": f"{width}x{height}", "frames": k + 1, **per, "total": sum(per.values()),
                         "faces": len(state.scene.faces),
                         "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--frames", type=int, nargs="*", default=[20, 100])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| frames | seconds per frame: render / inpainting / depth / fusing = total | scene faces | peak RSS MB |")
    print("|---|---|---|---|")
    for resolution in args.resolution:
        for row in walk(resolution, max(args.frames), tuple(args.frames)):
            print(f"| {row['px']}, {row['frames']} | {row['render']:.2f} / {row['inpainting']:.2f} / "
                  f"{row['depth']:.2f} / {row['fusing']:.2f} = {row['total']:.2f} | {row['faces']} | "
                  f"{row['rss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
