"""Reading the backend's mesh.ply into flat arrays Blender's `foreach_set` takes. No `bpy`:
this runs on the add-on's download thread, so the main thread only copies arrays.

Supports binary little-endian and ASCII PLY with float vertex positions, optional uchar or
float colours, and triangle faces (what the backend writes; other polygons are refused), with
optional per-face corner UVs (`property list uchar float texcoord`, 6 floats a face).
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field

_SCALAR = {"char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h", "ushort": "H",
           "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I", "float": "f", "float32": "f",
           "double": "d", "float64": "d"}


class PlyError(ValueError):
    pass


@dataclass
class MeshArrays:
    positions: array    # 'f', 3 per vertex (x, y, z; Z up, Blender's frame)
    triangles: array    # 'i', 3 vertex indices per face
    colors: array       # 'f', 4 per vertex (RGBA in [0, 1]); empty without colours
    uvs: array = field(default_factory=lambda: array("f"))
    """'f', 6 per face: (u, v) of its three corners in order, origin at the image's bottom-left
    (Blender's convention); empty when the PLY has no texcoord."""

    @property
    def vertex_count(self) -> int:
        return len(self.positions) // 3

    @property
    def face_count(self) -> int:
        return len(self.triangles) // 3


def _header(data: bytes) -> tuple[str, list, int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError("not a PLY file")
    body = data.index(b"\n", end) + 1
    fmt, elements = "", []
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append(words[1:])
    return fmt, elements, body


def read_ply(data: bytes) -> MeshArrays:
    fmt, elements, offset = _header(data)
    if fmt not in ("binary_little_endian", "ascii"):
        raise PlyError(f"PLY format {fmt!r} is not supported")
    if fmt == "ascii":
        return _read_ascii(data[offset:].decode("ascii").split(), elements)
    positions, colors, triangles, uvs = array("f"), array("f"), array("i"), array("f")
    for name, count, props in elements:
        if name == "vertex":
            offset = _read_vertices(data, offset, count, props, positions, colors)
        elif name == "face":
            offset = _read_faces(data, offset, count, props, triangles, uvs)
        else:
            if any(p[0] == "list" for p in props):
                raise PlyError(f"cannot skip list element {name!r}")
            offset += count * struct.calcsize("<" + "".join(_SCALAR[p[0]] for p in props))
    return MeshArrays(positions, triangles, colors, uvs)


def _read_vertices(data, offset, count, props, positions, colors) -> int:
    if any(p[0] == "list" for p in props):
        raise PlyError("list properties on vertices are not supported")
    names = [p[1] for p in props]
    if not all(axis in names for axis in "xyz"):
        raise PlyError("vertices have no x, y, z")
    types = {p[1]: _SCALAR[p[0]] for p in props}
    starts, at = {}, 0
    for p in props:
        starts[p[1]] = at
        at += struct.calcsize("<" + _SCALAR[p[0]])
    record, size = at, at * count
    chunk = memoryview(data)[offset:offset + size]

    def column_block(first: str, n: int, code: str) -> array | None:
        """n same-typed properties stored side by side from `first` on: one array, no tuples."""
        names_run = names[names.index(first):names.index(first) + n]
        if len(names_run) < n or any(types[name] != code for name in names_run):
            return None
        width = n * struct.calcsize(code)
        block = array(code)
        block.frombytes(b"".join(chunk[i + starts[first]:i + starts[first] + width] for i in range(0, size, record)))
        if sys.byteorder == "big":
            block.byteswap()
        return block

    xyz = column_block("x", 3, "f") if names[names.index("x"):names.index("x") + 3] == ["x", "y", "z"] else None
    rgb_names = ["red", "green", "blue"] + (["alpha"] if "alpha" in names else [])
    has_rgb = all(c in names for c in ("red", "green", "blue"))
    rgba = (column_block("red", len(rgb_names), "B")
            if has_rgb and names[names.index("red"):names.index("red") + len(rgb_names)] == rgb_names else None)
    if xyz is None or (has_rgb and rgba is None):   # an unusual layout: the general (slower) path
        columns = list(zip(*struct.iter_unpack("<" + "".join(types[n] for n in names), chunk))) if count else []
        axes = [columns[names.index(a)] for a in "xyz"] if count else [[], [], []]
        xyz = array("f", (v for t in zip(*axes) for v in t))
        if has_rgb:
            scale = 255.0 if types["red"] == "B" else 1.0
            channels = [columns[names.index(c)] for c in ("red", "green", "blue")] if count else [[], [], []]
            alpha = columns[names.index("alpha")] if "alpha" in names and count else [scale] * count
            colors.extend(v / scale for t in zip(*channels, alpha) for v in t)
    elif has_rgb:
        if len(rgb_names) == 4:
            colors.extend(array("f", (v / 255.0 for v in rgba)))
        else:
            colors.extend(v for i in range(0, len(rgba), 3) for v in (rgba[i] / 255.0, rgba[i + 1] / 255.0,
                                                                      rgba[i + 2] / 255.0, 1.0))
    positions.extend(xyz)
    return offset + size


#: Face lists read (name -> items a face must have); other face lists are skipped.
_FACE_LISTS = {"vertex_indices": 3, "vertex_index": 3, "texcoord": 6}


def _read_faces(data, offset, count, props, triangles, uvs) -> int:
    """Fixed-size records (every list has the same length on every face, checked): each list
    is cut out of the records in one pass, with no per-face tuples."""
    if any(p[0] != "list" for p in props) or not any(p[3] in ("vertex_indices", "vertex_index") for p in props):
        raise PlyError("faces must be lists: vertex_indices, and optionally texcoord")
    layout, at = [], offset      # (name, count code, item code, items, start within the record)
    for _, count_type, item_type, name in props:
        count_code, item_code = _SCALAR[count_type], _SCALAR[item_type]
        items = struct.unpack_from("<" + count_code, data, at)[0] if count else _FACE_LISTS.get(name, 0)
        layout.append((name, count_code, item_code, items, at - offset))
        at += struct.calcsize(count_code) + items * struct.calcsize(item_code)
    record = at - offset
    end = offset + count * record
    if end > len(data):
        raise PlyError("the PLY file is shorter than its header says")
    chunk = memoryview(data)[offset:end]
    for name, count_code, item_code, items, start in layout:
        head = struct.calcsize(count_code)
        counts = bytes(chunk[start::record]) if head == 1 else None
        uniform = counts.count(items) == count if counts is not None else False
        if name in ("vertex_indices", "vertex_index") and (items != 3 or not uniform):
            raise PlyError("only triangle meshes are supported (the backend writes triangles)")
        if name == "texcoord" and (items != 6 or not uniform):
            raise PlyError("texcoord must have 6 values (u, v of 3 corners) on every face")
        if name not in _FACE_LISTS:
            if not uniform:
                raise PlyError(f"face list {name!r} varies in length; cannot skip it")
            continue
        width = items * struct.calcsize(item_code)
        values = b"".join(chunk[i + start + head:i + start + head + width] for i in range(0, len(chunk), record))
        target = triangles if name != "texcoord" else uvs
        block = array(item_code) if item_code == target.typecode else None
        if block is None:
            target.extend(struct.unpack(f"<{items * count}{item_code}", values))
            continue
        block.frombytes(values)
        if sys.byteorder == "big":
            block.byteswap()
        target.extend(block)
    return end


def _read_ascii(words: list[str], elements) -> MeshArrays:
    positions, colors, triangles, uvs = array("f"), array("f"), array("i"), array("f")
    at = 0
    for name, count, props in elements:
        names = [p[-1] for p in props]
        for _ in range(count):
            if name == "face":
                at = _ascii_face(words, at, names, triangles, uvs)
                continue
            values = dict(zip(names, words[at:at + len(names)]))
            at += len(names)
            if name == "vertex":
                positions.extend(float(values[a]) for a in "xyz")
                if "red" in values:
                    scale = 255.0 if props[names.index("red")][0] in ("uchar", "uint8") else 1.0
                    colors.extend(float(values.get(c, scale)) / scale for c in ("red", "green", "blue", "alpha"))
    return MeshArrays(positions, triangles, colors, uvs)


def _ascii_face(words: list[str], at: int, names: list[str], triangles: array, uvs: array) -> int:
    """One face's lists (each a count, then its items); returns where the next face starts."""
    for name in names:
        n = int(words[at])
        items = words[at + 1:at + 1 + n]
        if name in ("vertex_indices", "vertex_index"):
            if n != 3:
                raise PlyError("only triangle meshes are supported (the backend writes triangles)")
            triangles.extend(int(w) for w in items)
        elif name == "texcoord":
            if n != 6:
                raise PlyError("texcoord must have 6 values (u, v of 3 corners) on every face")
            uvs.extend(float(w) for w in items)
        at += 1 + n
    return at
