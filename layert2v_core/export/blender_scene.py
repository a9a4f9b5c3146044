"""Blender compositing scene for a LayerT2V layer set (generated next to layers.json).

    blender -b --python blender_comp.py -- [--output DIR] [--save scene.blend] [--no-render]
    blender --python blender_comp.py                     # builds the scene in the UI, no render

In the background it exits 1 with one line when a file of the set is missing or anything fails.
From another script, give Blender this file's absolute path: it looks for a relative one under
$PWD, not the working folder a subprocess is given, and exits 0 when it cannot open it.

Loads each layer with the reading its file needs, stacks the foregrounds over the background with
Alpha Over (first foreground lowest) in the model's composite space, sRGB-encoded values, and
renders the recomposite as 16-bit PNGs (view transform Standard) that match the set's `full` layer.
Why each node is there (measured on Blender 3.4):
- sRGB-encoded files (PNG, ProRes) are read as Non-Color, so Blender hands over the stored values
  untouched (no linearisation, no premultiplication); straight files then need Alpha Over's
  "Convert Premultiplied", premultiplied ones do not. Blender takes every movie as premultiplied
  whatever its alpha mode says, so this setting is the one that decides.
- Linear EXRs (premultiplied, as OpenEXR defines) are un-premultiplied, converted to sRGB and
  then stacked like a straight file: compositing linear light instead would differ from `full`
  wherever alpha is soft.
This file runs inside Blender; the layer data below is written by layert2v_core/export/blender_comp.py.
"""

import argparse
import os
import sys

import bpy

SET = None  # the layer set, filled in by the generator

HERE = os.path.dirname(os.path.abspath(__file__))


def colour_space(*names):
    """The first of `names` this Blender's OCIO config has ('Linear' became 'Linear Rec.709' in 4.0)."""
    known = {item.identifier for item in
             bpy.types.ColorManagedInputColorspaceSettings.bl_rna.properties["name"].enum_items}
    for name in names:
        if name in known:
            return name
    raise SystemExit(f"blender_comp.py: none of the colour spaces {names} exists in this Blender")


def convert(tree, socket, source, target):
    node = tree.nodes.new("CompositorNodeConvertColorSpace")
    node.from_color_space, node.to_color_space = source, target
    tree.links.new(socket, node.inputs[0])
    return node.outputs[0]


def missing_files():
    """Set files that are not next to this script (a moved or partly copied set)."""
    names = []
    for layer in SET["layers"]:
        if layer["kind"] == "sequence":
            frames = range(layer["first_frame"], layer["first_frame"] + SET["frame_count"])
            names += [layer["pattern"] % i for i in frames]
        else:
            names.append(layer["file"])
    return [n for n in dict.fromkeys(names) if not os.path.isfile(os.path.join(HERE, n))]


def fail(message):
    """One line; a background run exits 1 (Blender itself would exit 0), the UI stays open."""
    print(f"blender_comp.py: {message}", file=sys.stderr)
    if bpy.app.background:
        sys.exit(1)


def load_layer(tree, layer, linear, srgb):
    """An Image node for one layer; returns (sRGB-encoded colour socket, is it straight?)."""
    image = bpy.data.images.load(os.path.join(HERE, layer["file"]), check_existing=True)
    image.source = "MOVIE" if layer["kind"] == "movie" else "SEQUENCE"
    image.colorspace_settings.name = linear if layer["transfer"] == "linear" else "Non-Color"
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    node.label = layer["name"]
    node.frame_duration = SET["frame_count"]
    node.frame_start = SET["first_frame"]
    # Blender shows file number (frame - start + 1) + offset; movies count from 1.
    node.frame_offset = 0 if layer["kind"] == "movie" else layer["first_frame"] - 1
    socket = node.outputs[layer["pass"]] if layer.get("pass") else node.outputs["Image"]
    if layer["transfer"] != "linear":
        return socket, layer["alpha_mode"] == "straight"
    if layer["alpha_mode"] == "premultiplied":
        unpremultiply = tree.nodes.new("CompositorNodePremulKey")
        unpremultiply.mapping = "PREMUL_TO_STRAIGHT"
        tree.links.new(socket, unpremultiply.inputs[0])
        socket = unpremultiply.outputs[0]
    return convert(tree, socket, linear, srgb), True


def build_scene():
    scene = bpy.context.scene
    render = scene.render
    render.resolution_x, render.resolution_y = SET["width"], SET["height"]
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1
    rate = SET["fps"]["num"] / SET["fps"]["den"]
    render.fps = max(1, round(rate))
    render.fps_base = render.fps / rate
    scene.frame_start = SET["first_frame"]
    scene.frame_end = SET["first_frame"] + SET["frame_count"] - 1
    render.use_compositing, render.use_sequencer = True, False
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = "Standard"  # the PNG then holds sRGB-encoded values
    scene.view_settings.look = "None"
    scene.view_settings.exposure, scene.view_settings.gamma = 0.0, 1.0
    scene.use_nodes = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        tree.nodes.remove(node)

    linear, srgb = colour_space("Linear", "Linear Rec.709"), colour_space("sRGB")
    stack, _ = load_layer(tree, SET["layers"][0], linear, srgb)  # the opaque background
    for layer in SET["layers"][1:]:
        colour, straight = load_layer(tree, layer, linear, srgb)
        over = tree.nodes.new("CompositorNodeAlphaOver")
        over.label = f"over {layer['name']}"
        over.use_premultiply = straight  # "Convert Premultiplied": premultiply a straight input
        tree.links.new(stack, over.inputs[1])
        tree.links.new(colour, over.inputs[2])
        stack = over.outputs[0]
    result = convert(tree, stack, srgb, linear)  # Blender's working space is linear
    for kind in ("CompositorNodeComposite", "CompositorNodeViewer"):
        tree.links.new(result, tree.nodes.new(kind).inputs[0])
    for i, node in enumerate(tree.nodes):  # a readable left-to-right layout in the node editor
        node.location = (220 * i, -60 * (i % 4))
    return scene


def main():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="blender_comp.py")
    parser.add_argument("--output", default=os.path.join(HERE, "blender_recomposite"),
                        help="folder for recomposite.NNNNN.png (16-bit sRGB)")
    parser.add_argument("--save", help="also save the scene as this .blend file")
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args(argv)
    missing = missing_files()
    if missing:
        return fail(f"{len(missing)} file(s) of the layer set missing next to this script, first "
                    f"{missing[0]}: run it inside the complete set folder")
    try:
        render(args)
    except Exception as e:  # Blender would print a traceback and still exit 0
        fail(f"{type(e).__name__}: {e}")


def render(args):
    scene = build_scene()
    if args.save:
        bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.save))
    if bpy.app.background and not args.no_render:
        settings = scene.render.image_settings
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "16"
        scene.render.filepath = os.path.join(os.path.abspath(args.output), "recomposite.#####")
        if "FINISHED" not in bpy.ops.render.render(animation=True):
            fail(f"the render did not finish; nothing complete in {args.output}")


main()
