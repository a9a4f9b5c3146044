"""One movie file as Blender's compositor reads it, RGBA untouched (run inside Blender by the tests).

    blender -b --factory-startup --python blender_movie_rgba.py -- MOVIE OUT_FOLDER FRAMES W H

The Image node (colour space Non-Color) goes straight to the Composite node with its alpha;
view transform Raw, so the 16-bit RGBA PNGs hold exactly the values Blender decoded.
"""

import os
import sys

import bpy

movie, out, frames, width, height = sys.argv[sys.argv.index("--") + 1:]
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y = int(width), int(height)
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, int(frames)
scene.view_settings.view_transform = "Raw"
scene.render.use_compositing, scene.render.use_sequencer = True, False
scene.use_nodes = True
tree = scene.node_tree
for node in list(tree.nodes):
    tree.nodes.remove(node)
image = bpy.data.images.load(movie)
image.source = "MOVIE"
image.colorspace_settings.name = "Non-Color"
source = tree.nodes.new("CompositorNodeImage")
source.image, source.frame_duration = image, int(frames)
composite = tree.nodes.new("CompositorNodeComposite")
composite.use_alpha = True
tree.links.new(source.outputs["Image"], composite.inputs["Image"])
settings = scene.render.image_settings
settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "16"
scene.render.filepath = os.path.join(out, "movie.#####")
bpy.ops.render.render(animation=True)
