"""Blender's Video Sequencer, driven the way the README describes (run inside Blender by the tests).

    blender -b --factory-startup --python blender_sequencer.py -- SET_FOLDER OUT_FOLDER ALPHA_MODE

Background strip in channel 1, foreground ProRes strips above it with Blend "Alpha Over", each
strip's Alpha Mode as the set's files store it; rendered as 16-bit sRGB PNGs.
"""

import json
import os
import sys

import bpy

folder, out, alpha_mode = sys.argv[sys.argv.index("--") + 1:]
manifest = json.load(open(os.path.join(folder, "layers.json")))
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y = manifest["width"], manifest["height"]
scene.render.resolution_percentage = 100
scene.render.fps, scene.render.fps_base = manifest["fps"]["num"], manifest["fps"]["den"]
scene.frame_start, scene.frame_end = 1, manifest["frame_count"]
scene.view_settings.view_transform = "Standard"
scene.render.use_sequencer, scene.render.use_compositing = True, False
edit = scene.sequence_editor_create()
for channel, name in enumerate(manifest["composite_order"], start=1):
    strip = edit.sequences.new_movie(name, os.path.join(folder, "prores", name + ".mov"), channel, 1)
    if channel > 1:
        strip.blend_type = "ALPHA_OVER"
        strip.alpha_mode = "PREMUL" if alpha_mode == "premultiplied" else "STRAIGHT"
settings = scene.render.image_settings
settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "16"
scene.render.filepath = os.path.join(out, "seq.#####")
bpy.ops.render.render(animation=True)
