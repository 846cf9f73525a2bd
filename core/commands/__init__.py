"""The `reconstruct` and `fit` commands and the one factory that turns a mode (deca, fit, deca+fit) into a
reconstructor; the CLI and the Blender worker both go through it."""
