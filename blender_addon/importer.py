"""The one place where arrays become Blender data: a mesh with a FLOAT_COLOR point colour
attribute and a material that shows it. Main thread only (timers, operators)."""

from __future__ import annotations

from array import array

import bpy

from .plymesh import MeshArrays

COLLECTION = "Dreamsculpt"
COLOR_ATTRIBUTE = "Color"
MATERIAL = "Dreamsculpt Vertex Color"


def _collection(scene: bpy.types.Scene) -> bpy.types.Collection:
    collection = bpy.data.collections.get(COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(COLLECTION)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def vertex_color_material() -> bpy.types.Material:
    """Principled BSDF whose base colour is the mesh's colour attribute (Material Preview,
    EEVEE and Cycles all show it)."""
    material = bpy.data.materials.get(MATERIAL)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.6
    return material


def build_mesh(name: str, arrays: MeshArrays) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    n_vertices, n_faces = arrays.vertex_count, arrays.face_count
    mesh.vertices.add(n_vertices)
    mesh.vertices.foreach_set("co", arrays.positions)
    mesh.loops.add(3 * n_faces)
    mesh.loops.foreach_set("vertex_index", arrays.triangles)
    mesh.polygons.add(n_faces)
    mesh.polygons.foreach_set("loop_start", array("i", range(0, 3 * n_faces, 3)))
    if len(arrays.colors) == 4 * n_vertices:
        colors = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        colors.data.foreach_set("color", arrays.colors)
        mesh.color_attributes.active_color = colors
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update(calc_edges=True)
    mesh.materials.append(vertex_color_material())
    return mesh


def import_result(context: bpy.types.Context, arrays: MeshArrays, name: str, properties: dict,
                  replace: bpy.types.Object | None = None) -> bpy.types.Object:
    """Add the mesh as an object at the 3D cursor in the "Dreamsculpt" collection, with
    `properties` as custom properties; `replace` (an earlier result) is removed."""
    scene = context.scene
    mesh = build_mesh(name, arrays)
    obj = bpy.data.objects.new(name, mesh)
    _collection(scene).objects.link(obj)
    obj.location = scene.cursor.location.copy()
    for key, value in properties.items():
        obj[key] = value
    if replace is not None:
        obj.location, obj.rotation_euler, obj.scale = replace.location, replace.rotation_euler, replace.scale
        old_mesh = replace.data
        bpy.data.objects.remove(replace)
        if old_mesh is not None and old_mesh.users == 0:
            bpy.data.meshes.remove(old_mesh)
    for other in context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj
    bpy.ops.ed.undo_push(message=f"Dreamsculpt: import {name}")
    return obj
