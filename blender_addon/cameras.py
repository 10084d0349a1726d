"""Camera maths of the image modes, on plain lists (no `bpy`, no numpy): the CameraSpec the
backend reads, the capture size, the object's depth, and where an image plane of a novel view
hangs. Blender's frame: Z up, a camera looks down its local -Z with +Y up; matrices are 4x4
row-major lists, lengths in world units, angles in degrees.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
Matrix = list[list[float]]


def identity() -> Matrix:
    return [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]


@dataclass
class CameraSpec:
    """A perspective Blender camera, as the backend reads it (`--camera FILE`, POST /jobs)."""

    matrix_world: Matrix = field(default_factory=identity)   # the camera object's, row-major (scale ignored)
    lens: float = 50.0                # mm
    sensor_width: float = 36.0        # mm
    sensor_height: float = 24.0       # mm
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0              # in units of the fitted sensor side
    shift_y: float = 0.0

    def __post_init__(self):
        rows = [[float(v) for v in row] for row in self.matrix_world]
        if len(rows) != 4 or any(len(row) != 4 for row in rows):
            raise ValueError("matrix_world must be 4x4")
        if self.sensor_fit not in SENSOR_FITS:
            raise ValueError(f"sensor_fit must be one of {SENSOR_FITS}, not {self.sensor_fit!r}")
        if self.lens <= 0 or self.sensor_width <= 0 or self.sensor_height <= 0:
            raise ValueError("lens and sensor sizes must be positive")
        self.matrix_world = rows

    @property
    def location(self) -> tuple[float, float, float]:
        return translation(self.matrix_world)

    def to_json(self) -> dict:
        return asdict(self)


def translation(matrix: Matrix) -> tuple[float, float, float]:
    return matrix[0][3], matrix[1][3], matrix[2][3]


def capture_size(resolution_x: int, resolution_y: int, percentage: int = 100, pixel_aspect_x: float = 1.0,
                 pixel_aspect_y: float = 1.0, longest: int = 512) -> tuple[int, int]:
    """The capture's size in square pixels: the scene's output shape (resolution x percentage,
    stretched by the pixel aspect) with its longer side capped at `longest`.

    1920x1080 at 100 %, longest 512 -> (512, 288); 400x300 at 50 % -> (200, 150)."""
    width = resolution_x * percentage / 100.0 * pixel_aspect_x
    height = resolution_y * percentage / 100.0 * pixel_aspect_y
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def box_centre(points) -> tuple[float, float, float]:
    """Centre of the axis-aligned box around `points` ((x, y, z) tuples, world units)."""
    points = list(points)
    if not points:
        raise ValueError("no points")
    return tuple((min(p[i] for p in points) + max(p[i] for p in points)) / 2.0 for i in range(3))


def distance(a, b) -> float:
    return math.sqrt(sum((a[i] - b[i]) ** 2 for i in range(3)))


def depth(camera_location, points) -> float | None:
    """Distance from the camera centre to the centre of the world box around `points` (the
    corners of the visible objects' bounding boxes); None when there are none."""
    points = list(points)
    if not points:
        return None
    value = distance(camera_location, box_centre(points))
    return value if value > 0 else None


def rotation_columns(matrix: Matrix) -> list[tuple[float, float, float]]:
    """The matrix's three axes (columns), each normalised: its rotation with scale removed."""
    axes = []
    for j in range(3):
        column = [matrix[i][j] for i in range(3)]
        norm = math.sqrt(sum(v * v for v in column)) or 1.0
        axes.append(tuple(v / norm for v in column))
    return axes


def view_plane(camera_matrix: Matrix, centre, fov_deg: float) -> tuple[Matrix, float]:
    """Where the image plane of one novel view hangs, and its side length.

    The plane stands where that view's camera stands, turned like the camera (its normal is the
    camera's +Z, away from the object), so from there or from further out the picture reads as
    the camera saw it. Its side is the frustum's width at the object's centre,
    2 d tan(fov / 2) with d the camera's distance to `centre`: the object in the picture has the
    object's size. (d = 4, fov 40 -> side 2.912.)"""
    location = translation(camera_matrix)
    side = 2.0 * distance(location, centre) * math.tan(math.radians(fov_deg) / 2.0)
    x, y, z = rotation_columns(camera_matrix)
    matrix = [[x[i], y[i], z[i], location[i]] for i in range(3)] + [[0.0, 0.0, 0.0, 1.0]]
    return matrix, side


def is_matrix(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(row, list) and len(row) == 4
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in row) for row in value))
