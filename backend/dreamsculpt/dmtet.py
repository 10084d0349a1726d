"""An explicit surface to refine: Deep Marching Tetrahedra (Shen et al., NeurIPS 2021).

A signed distance per node of a tetrahedral grid, and an offset per node; the surface is
where the distance crosses zero along the tetrahedra's edges (marching tetrahedra), so its
vertices move with both, differentiably, and its topology may change as they do.

Why DMTet and not FlexiCubes (by measurement, ../shared/FINDINGS.md and bench/bench_refine.py):
FlexiCubes' pure-torch extraction at 64^3 took 1.6 s forward and 0.8 s backward on these 2
cores; marching tetrahedra on a 64^3 grid takes well under 0.1 s. At a few hundred refinement
steps the extraction must cost less than the guidance, so: DMTet.

The grid is a regular one, each cube split into six tetrahedra around its main diagonal (the
Kuhn triangulation: neighbouring cubes share their faces' diagonals, so it needs no tet
files and the surface closes), kept only in a band of cubes around the coarse surface.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn as nn

from .rasterizer import Topology

#: The six tetrahedra of a cube, as corner numbers (bit 0: +x, bit 1: +y, bit 2: +z): the
#: monotone paths from corner 0 to corner 7.
CUBE_TETS = [[0, 1 << a, (1 << a) | (1 << b), 7] for a, b, _ in itertools.permutations(range(3))]
#: A tetrahedron's six edges (corner pairs).
TET_EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def _triangle_table() -> torch.Tensor:
    """[16, 2, 3] local edge numbers of the (up to two) triangles of each inside-pattern
    (bit i: corner i inside), -1 for none. Winding is fixed later, from the geometry."""
    edge_of = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    for code in range(1, 15):
        inside = [i for i in range(4) if code >> i & 1]
        outside = [i for i in range(4) if not code >> i & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, 0] = torch.tensor([edge_of[frozenset((lone, o))] for o in others])
        else:
            (i, j), (k, m) = inside, outside
            quad = [edge_of[frozenset(p)] for p in ((i, k), (i, m), (j, m), (j, k))]  # a cycle
            table[code, 0] = torch.tensor(quad[:3])
            table[code, 1] = torch.tensor([quad[0], quad[2], quad[3]])
    return table


TRIANGLES = _triangle_table()


@dataclass
class TetGrid:
    """Tetrahedra of the cubes of an N^3 grid over [-bound, bound]^3 that a band keeps.

    nodes: [V] flat ids into the (N + 1)^3 lattice (x slowest); positions: [V, 3];
    tets: [T, 4] indices into `nodes`."""

    resolution: int
    bound: float
    nodes: torch.Tensor
    positions: torch.Tensor
    tets: torch.Tensor

    @property
    def cell(self) -> float:
        return 2.0 * self.bound / self.resolution

    @staticmethod
    def around(keep_cube: np.ndarray, bound: float) -> "TetGrid":
        """The grid of the cubes where keep_cube [N, N, N] (indexed x, y, z) is true."""
        n = keep_cube.shape[0]
        cubes = torch.from_numpy(np.argwhere(keep_cube)).long()                 # [C, 3]
        corner = torch.tensor([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in range(8)])
        lattice = (cubes[:, None] + corner[None])                                # [C, 8, 3]
        flat = (lattice[..., 0] * (n + 1) + lattice[..., 1]) * (n + 1) + lattice[..., 2]
        tets = flat[:, CUBE_TETS].reshape(-1, 4)                                  # [6C, 4]
        nodes, tets = torch.unique(tets, return_inverse=True)
        ijk = torch.stack([nodes // (n + 1) ** 2, nodes // (n + 1) % (n + 1), nodes % (n + 1)], -1)
        positions = ijk.float() / n * 2.0 * bound - bound
        return TetGrid(n, bound, nodes, positions, tets)


@dataclass
class TriangleMesh:
    """vertices: [V, 3] (differentiable), faces: [F, 3] int64, wound counter-clockwise from outside."""

    vertices: torch.Tensor
    faces: torch.Tensor

    @cached_property
    def topology(self) -> Topology:
        """Its edges (computed once: the render and the regularisers of a step share them)."""
        return Topology.of(self.faces, len(self.vertices))

    def face_normals(self) -> torch.Tensor:
        """[F, 3] unit normals."""
        v = self.vertices[self.faces]
        return torch.nn.functional.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1)

    def vertex_normals(self) -> torch.Tensor:
        """[V, 3] unit normals: the area-weighted sum of the faces around each vertex."""
        v = self.vertices[self.faces]
        weighted = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        total = torch.zeros_like(self.vertices).index_add(0, self.faces.reshape(-1),
                                                         weighted.repeat_interleave(3, 0))
        return torch.nn.functional.normalize(total, dim=-1)


def marching_tets(positions: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor,
                  reference: torch.Tensor | None = None) -> TriangleMesh:
    """The zero level of `sdf` [V] (negative inside) over tetrahedra `tets` [T, 4] of nodes at
    `positions` [V, 3]: a closed mesh whose vertices lie on the edges where the sign changes,
    at the linear interpolation's zero (differentiable in positions and sdf).

    Winding is decided on `reference` node positions (default: `positions`; the undeformed
    grid, whose tetrahedra are never flat) from the middles of the cut edges: a vertex's own
    position can sit on a corner (a distance of zero) and leave its triangle without area,
    and so without a sign."""
    with torch.no_grad():
        inside = sdf[tets] < 0                                                   # [T, 4]
        code = (inside.long() << torch.arange(4, device=tets.device)).sum(-1)
        crossing = (code > 0) & (code < 15)
        tets, code, inside = tets[crossing], code[crossing], inside[crossing]
        pairs = tets[:, TET_EDGES]                                               # [T, 6, 2]
        pairs = torch.sort(pairs, -1).values
        cut = inside[:, [a for a, _ in TET_EDGES]] != inside[:, [b for _, b in TET_EDGES]]
        count = positions.shape[0]
        keys = pairs[..., 0] * count + pairs[..., 1]
        unique, index = torch.unique(keys[cut], return_inverse=True)
        edge_vertex = torch.full(keys.shape, -1, dtype=torch.long, device=tets.device)
        edge_vertex[cut] = index
        local = TRIANGLES.to(tets.device)[code]                                  # [T, 2, 3]
        present = local[:, :, 0] >= 0
        faces = torch.gather(edge_vertex[:, None].expand(-1, 2, -1), 2, local.clamp_min(0))[present]
        owner = torch.arange(len(tets), device=tets.device)[:, None].expand(-1, 2)[present]
    a, b = unique // count, unique % count
    sa, sb = sdf[a][:, None], sdf[b][:, None]
    vertices = (positions[a] * sb - positions[b] * sa) / (sb - sa)
    with torch.no_grad():
        # Wind every triangle so that its normal points from the inside corners to the outside.
        reference = positions if reference is None else reference
        corner = reference[tets[owner]]                                          # [F, 4, 3]
        ins = inside[owner].float()[..., None]
        direction = (corner * (1 - ins)).sum(1) / (1 - ins).sum(1) - (corner * ins).sum(1) / ins.sum(1)
        v = (0.5 * (reference[a] + reference[b]))[faces]
        normal = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        flip = (normal * direction).sum(-1) < 0
        faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return TriangleMesh(vertices, faces)


#: Cells per axis of the coarse correction grids added to the nodes' distances (see DMTet).
LEVELS = (4, 8, 16)


class DMTet(nn.Module):
    """A learnable signed distance and offset per grid node. The offsets stay under 0.45 of a
    cell (tanh), so no tetrahedron turns inside out.

    The distance is the node's own value plus corrections interpolated from coarse grids
    (LEVELS cells per axis over the box): where only a face's outline is seen (a silhouette), a
    per-node value moves only the nodes under the outline, while a coarse correction moves the
    whole face with it."""

    def __init__(self, grid: TetGrid, sdf: torch.Tensor, frozen: torch.Tensor | None = None):
        super().__init__()
        self.grid = grid
        self.sdf = nn.Parameter(sdf.clone().float())
        self.deform = nn.Parameter(torch.zeros_like(grid.positions))
        self.levels = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, r + 1, r + 1, r + 1)) for r in LEVELS])
        # Nodes at the band's edge keep their sign: the surface cannot leave the band open.
        self.register_buffer("initial", sdf.clone().float())
        self.register_buffer("frozen", torch.zeros_like(self.initial, dtype=torch.bool) if frozen is None else frozen)

    def positions(self) -> torch.Tensor:
        return self.grid.positions.to(self.deform.device) + 0.45 * self.grid.cell * torch.tanh(self.deform)

    def distances(self) -> torch.Tensor:
        # grid_sample's (x, y, z) index the last, middle and first axes: levels are [z, y, x].
        at = (self.grid.positions.to(self.sdf.device) / self.grid.bound)[None, :, None, None, :]
        coarse = sum(torch.nn.functional.grid_sample(level, at, align_corners=True).reshape(-1)
                     for level in self.levels)
        return torch.where(self.frozen, self.initial, self.sdf + coarse)

    def mesh(self) -> TriangleMesh:
        return marching_tets(self.positions(), self.distances(), self.grid.tets.to(self.sdf.device),
                             self.grid.positions.to(self.sdf.device))
