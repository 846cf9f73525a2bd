"""Building a head in the scene from a result folder: armature, mesh, shape keys, drivers, material."""
