"""Reconstruction with DECA's networks: from photo to codes, meshes, textures, details and the wrinkle model.

The result it produces and the folder it writes live in `core.results` (numpy only); the face model it
decodes with lives in `core.model`.
"""
