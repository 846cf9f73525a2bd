"""The code and map sizes every stage agrees on (DECA's release; docs/CONVENTIONS.md). Plain ints, no imports, so
the networks, the face model, the results package (numpy only) and Blender can all name them."""

N_SHAPE = 100  # identity coefficients DECA regresses (FLAME has 300; the rest stay 0)
N_EXP = 50  # expression coefficients (FLAME 2020 has 100; DECA uses the first 50)
N_TEX = 50  # texture-space (albedo) coefficients
N_POSE = 6  # global rotation (3) + jaw (3), axis-angle
N_JAW = 3
N_CAM = 3  # orthographic camera: scale, tx, ty
N_SH = 9  # spherical-harmonics bands; light is (N_SH, 3)
N_DETAIL = 128  # detail code
N_LANDMARKS = 68
DISPLACEMENT_SIZE = 256  # UV displacement / detail normal maps
TEXTURE_SIZE = 512  # texture.png / albedo.png
