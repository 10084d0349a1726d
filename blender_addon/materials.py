"""The materials an imported result wears: its own textures (packed into the .blend) on a
Principled BSDF, or, without textures, the mesh's colour attribute. Main thread only.

The texture layout is the backend's: texture.png is the sRGB base colour, normal.png (when
asked for) a tangent-space normal map in the OpenGL convention (+Y up, Blender's and glTF's),
both addressed by the mesh's one UV map.
"""

from __future__ import annotations

import bpy

from .jobs import TextureSet

COLOR_ATTRIBUTE = "Color"
UV_MAP = "UVMap"
VERTEX_COLOR_MATERIAL = "Dreamsculpt Vertex Color"
#: A generated albedo has no specular information: a matte, non-metal surface is the honest guess.
ROUGHNESS = 0.9


def _node_material(name: str) -> tuple[bpy.types.Material, bpy.types.Node]:
    """A new material with nodes, and its Principled BSDF."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:   # Blender 4.x: nodes on request (5.x always has them)
        material.use_nodes = True
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return material, bsdf


def vertex_color_material() -> bpy.types.Material:
    """Principled BSDF whose base colour is the mesh's colour attribute (Material Preview,
    EEVEE and Cycles all show it); one shared by every result without textures."""
    material = bpy.data.materials.get(VERTEX_COLOR_MATERIAL)
    if material is not None:
        return material
    material, bsdf = _node_material(VERTEX_COLOR_MATERIAL)
    attribute = material.node_tree.nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (bsdf.location.x - 300, bsdf.location.y)
    material.node_tree.links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.6
    return material


def packed_image(path: str, name: str, colorspace: str) -> bpy.types.Image:
    """The image at `path`, packed into the .blend (the file stays self-contained once the
    download folder is gone)."""
    image = bpy.data.images.load(path, check_existing=False)
    image.name = name
    image.colorspace_settings.name = colorspace
    image.pack()
    return image


def textured_material(name: str, textures: TextureSet) -> bpy.types.Material:
    """A material of its own, named `name`: base colour texture -> Principled BSDF Base Color
    (roughness ROUGHNESS, metallic 0), and with a normal map: texture (Non-Color) -> Normal
    Map (tangent space, UV_MAP) -> BSDF Normal."""
    material, bsdf = _node_material(name)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    x, y = bsdf.location.x, bsdf.location.y
    base = nodes.new("ShaderNodeTexImage")
    base.image = packed_image(textures.base_color, f"{name} base color", "sRGB")
    base.location = (x - 400, y)
    links.new(base.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = ROUGHNESS
    bsdf.inputs["Metallic"].default_value = 0.0
    if textures.normal:
        normal = nodes.new("ShaderNodeTexImage")
        normal.image = packed_image(textures.normal, f"{name} normal", "Non-Color")
        normal.location = (x - 600, y - 320)
        normal_map = nodes.new("ShaderNodeNormalMap")
        normal_map.space, normal_map.uv_map = "TANGENT", UV_MAP
        normal_map.location = (x - 250, y - 320)
        links.new(normal.outputs["Color"], normal_map.inputs["Color"])
        links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
    return material


def remove_unused(materials) -> None:
    """Remove the result materials (and their images) nothing uses any more: a replaced
    result's. The shared vertex-colour material stays."""
    for material in materials:
        if material is None or material.users or material.name == VERTEX_COLOR_MATERIAL:
            continue
        images = [n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
        bpy.data.materials.remove(material)
        for image in images:
            if image.users == 0:
                bpy.data.images.remove(image)
