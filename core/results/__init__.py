"""What a reconstruction produces, with numpy alone: the result schema, the rig, image encodings, the folder writer.

This is the contract with Blender: the add-on imports this package inside Blender's UI process, so nothing
here may import torch (tests/test_layout.py checks it in a subprocess).
"""
