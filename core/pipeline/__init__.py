"""From photo to result folder: decoding, textures, detail, the wrinkle model, writing results.

This package's __init__ imports nothing heavy: the Blender add-on reads `core.pipeline.result` with
numpy alone, and must not pull torch into Blender's process.
"""
