"""The head's material: albedo, the photo's detail normal map, and displacement driven by the sliders.

Images. UV images in result folders are stored top row first (row 0 is v = 1, docs/CONVENTIONS.md);
Blender's pixel buffers start at the bottom row, so arrays are flipped when they become images. The
wrinkle model's maps are float images created in memory, four maps per RGBA image ('CHANNEL_PACKED',
Non-Color, full float), and packed into the .blend as OpenEXR (lossless float), so a saved file is
self-contained. The albedo and detail-normal PNGs stay external files of the result folder (File >
External Data > Pack Resources packs them too).

Node group `DECA Wrinkles <head>` (one per head, never shared) computes, per texel,
    linear = base + sum_k factor_k * map_k,   out = linear + Exact * (exact - linear)
where the Value nodes `factor_<k>` are driven from the expression sliders and the jaw (drivers.py) and
`exact` is the displacement the worker decoded for the current sliders (exact-wrinkles mode).
The material feeds it to a Displacement node (metres along the normal, material displacement 'BUMP',
so it shades in EEVEE's Material Preview and in Cycles without subdividing the mesh).
"""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .drivers import factor_node_name

GROUP_OUTPUT_SOCKET = "Displacement"
EXACT_SOCKET = "Exact"


def _float_image(name: str, channels: list[np.ndarray | None], alpha_packed: bool) -> bpy.types.Image:
    """An RGBA float image from up to four (S, S) arrays stored top row first."""
    size = next(c for c in channels if c is not None).shape[0]
    img = bpy.data.images.new(name, size, size, alpha=True, float_buffer=True)
    # Colour settings first: changing them on a generated image regenerates (clears) its pixels.
    img.colorspace_settings.name = "Non-Color"
    img.alpha_mode = "CHANNEL_PACKED"
    if hasattr(img, "use_half_precision"):
        img.use_half_precision = False
    px = np.zeros((size, size, 4), np.float32)
    if not alpha_packed:
        px[..., 3] = 1.0
    for i, c in enumerate(channels):
        if c is not None:
            px[..., i] = np.asarray(c, np.float32)[::-1]
    img.pixels.foreach_set(px.ravel())
    img["deca_generated"] = True
    img.pack()
    return img


def set_float_image(img: bpy.types.Image, array: np.ndarray, channels: tuple[int, ...] = (0, 1, 2)) -> None:
    """Replace channels of a DECA float image with an (S, S) array (top row first); repacks it."""
    array = np.asarray(array, np.float32)
    size = img.size[0]
    if array.shape != (size, size):
        raise ValueError(f"displacement of shape {array.shape} does not fit the {size}x{size} image {img.name}")
    px = np.empty(size * size * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(size, size, 4)
    for c in channels:
        px[..., c] = array[::-1]
    img.pixels.foreach_set(px.ravel())
    img.update()
    img.pack()


def _load_image(path: Path, name: str, colorspace: str) -> bpy.types.Image | None:
    if not path.is_file():
        return None
    img = bpy.data.images.load(str(path), check_existing=False)
    img.name = name
    img.colorspace_settings.name = colorspace
    return img


def _image_node(nodes, img, label: str, location, interpolation: str = "Linear"):
    node = nodes.new("ShaderNodeTexImage")
    node.image = img
    node.label = label
    node.interpolation = interpolation
    node.extension = "EXTEND"
    node.location = location
    return node


def build_wrinkle_group(name: str, wrinkle_base: np.ndarray, wrinkle_maps: np.ndarray,
                        exact_displacement: np.ndarray) -> tuple[bpy.types.NodeTree, list]:
    """The node group and its images (base, packed maps..., exact)."""
    K = wrinkle_maps.shape[0]
    images = [_float_image(f"{name}_wrinkle_base", [wrinkle_base, wrinkle_base, wrinkle_base, None], False)]
    for i in range(0, K, 4):
        chans = [wrinkle_maps[k] if k < K else None for k in range(i, i + 4)]
        images.append(_float_image(f"{name}_wrinkle_maps_{i // 4}", chans, True))
    exact_img = _float_image(f"{name}_displacement_exact", [exact_displacement, exact_displacement, exact_displacement, None], False)
    images.append(exact_img)

    group = bpy.data.node_groups.new(f"DECA Wrinkles {name}", "ShaderNodeTree")
    sock = group.interface.new_socket(EXACT_SOCKET, in_out="INPUT", socket_type="NodeSocketFloat")
    sock.default_value, sock.min_value, sock.max_value = 0.0, 0.0, 1.0
    group.interface.new_socket(GROUP_OUTPUT_SOCKET, in_out="OUTPUT", socket_type="NodeSocketFloat")
    nodes, links = group.nodes, group.links
    gin = nodes.new("NodeGroupInput")
    gin.location = (-900, 300)
    gout = nodes.new("NodeGroupOutput")

    def separate(img_node, x, y):
        sep = nodes.new("ShaderNodeSeparateColor")
        sep.location = (x, y)
        links.new(img_node.outputs["Color"], sep.inputs[0])
        return sep

    base_node = _image_node(nodes, images[0], "wrinkle base", (-900, 0))
    base_sep = separate(base_node, -650, 0)
    acc = base_sep.outputs[0]
    y = -300
    for i, img in enumerate(images[1:-1]):
        img_node = _image_node(nodes, img, f"wrinkle maps {4 * i}..{min(K, 4 * i + 4) - 1}", (-900, y))
        sep = separate(img_node, -650, y)
        channel_outputs = [sep.outputs[0], sep.outputs[1], sep.outputs[2], img_node.outputs["Alpha"]]
        for c in range(4):
            k = 4 * i + c
            if k >= K:
                break
            factor = nodes.new("ShaderNodeValue")
            factor.name = factor.label = factor_node_name(k)
            factor.outputs[0].default_value = 0.0
            factor.location = (-450, y - 60 * c)
            mad = nodes.new("ShaderNodeMath")
            mad.operation = "MULTIPLY_ADD"
            mad.name = f"add_{k:02d}"
            mad.location = (-250 + 20 * k, y - 60 * c)
            links.new(channel_outputs[c], mad.inputs[0])
            links.new(factor.outputs[0], mad.inputs[1])
            links.new(acc, mad.inputs[2])
            acc = mad.outputs[0]
        y -= 300
    exact_node = _image_node(nodes, exact_img, "exact displacement (worker)", (-900, y))
    exact_sep = separate(exact_node, -650, y)
    diff = nodes.new("ShaderNodeMath")
    diff.operation = "SUBTRACT"
    diff.location = (200, 0)
    links.new(exact_sep.outputs[0], diff.inputs[0])
    links.new(acc, diff.inputs[1])
    mix = nodes.new("ShaderNodeMath")
    mix.operation = "MULTIPLY_ADD"
    mix.name = "exact_mix"
    mix.location = (400, 0)
    links.new(diff.outputs[0], mix.inputs[0])
    links.new(gin.outputs[EXACT_SOCKET], mix.inputs[1])
    links.new(acc, mix.inputs[2])
    gout.location = (600, 0)
    links.new(mix.outputs[0], gout.inputs[GROUP_OUTPUT_SOCKET])
    return group, images


def build_material(name: str, folder: Path, group: bpy.types.NodeTree) -> bpy.types.Material:
    mat = bpy.data.materials.new(f"DECA {name}")
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    out.location = (600, 0)
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.location = (250, 0)
    bsdf.inputs["Roughness"].default_value = 0.55
    links.new(bsdf.outputs[0], out.inputs["Surface"])

    albedo = None
    for fname in ("albedo.png", "texture.png"):
        albedo = _load_image(folder / fname, f"{name}_albedo", "sRGB")
        if albedo is not None:
            break
    tex = nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = "albedo"
    tex.location = (-300, 200)
    if albedo is not None:
        tex.image = albedo
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = (0.6, 0.45, 0.38, 1.0)

    normals_img = _load_image(folder / "detail_normals.png", f"{name}_detail_normals", "Non-Color")
    nmap = nodes.new("ShaderNodeNormalMap")
    nmap.name = nmap.label = "detail_normals"
    nmap.space = "OBJECT"
    nmap.location = (0, -250)
    nmap.inputs["Strength"].default_value = 0.0
    if normals_img is not None:
        ntex = nodes.new("ShaderNodeTexImage")
        ntex.name = ntex.label = "detail_normals_image"
        ntex.image = normals_img
        ntex.location = (-300, -250)
        links.new(ntex.outputs["Color"], nmap.inputs["Color"])
        # Linked to the BSDF only in 'Photo Normal Map' mode (apply_head_settings): an object-space map
        # would otherwise also leave with glTF/FBX exports, whose engines expect tangent-space normals.

    gnode = nodes.new("ShaderNodeGroup")
    gnode.name = gnode.label = "wrinkles"
    gnode.node_tree = group
    gnode.location = (0, -500)
    disp = nodes.new("ShaderNodeDisplacement")
    disp.name = disp.label = "displacement"
    disp.space = "OBJECT"
    disp.location = (300, -500)
    disp.inputs["Midlevel"].default_value = 0.0
    disp.inputs["Scale"].default_value = 1.0
    links.new(gnode.outputs[GROUP_OUTPUT_SOCKET], disp.inputs["Height"])
    links.new(disp.outputs[0], out.inputs["Displacement"])
    if "displacement_method" in mat.bl_rna.properties:
        mat.displacement_method = "BUMP"
    else:  # Blender 4.2's Cycles keeps it in the Cycles material settings
        mat.cycles.displacement_method = "BUMP"
    return mat


def apply_head_settings(mesh_obj) -> None:
    """Push the head's properties (detail source and strength, exact mode) into its material."""
    props = mesh_obj.deca
    mat = mesh_obj.active_material
    if mat is None or mat.node_tree is None:
        return
    nodes = mat.node_tree.nodes
    use_disp = props.detail_source == "DISPLACEMENT"
    if "displacement" in nodes:
        nodes["displacement"].inputs["Scale"].default_value = props.detail_strength if use_disp else 0.0
    if "detail_normals" in nodes:
        nmap = nodes["detail_normals"]
        nmap.inputs["Strength"].default_value = 0.0 if use_disp else props.detail_strength
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is not None:
            for link in list(bsdf.inputs["Normal"].links):
                mat.node_tree.links.remove(link)
            if not use_disp and "detail_normals_image" in nodes:
                mat.node_tree.links.new(nmap.outputs[0], bsdf.inputs["Normal"])
    if "wrinkles" in nodes:
        nodes["wrinkles"].inputs[EXACT_SOCKET].default_value = 1.0 if props.exact_wrinkles else 0.0
