"""What the project needs from outside the repo, where each piece comes from and how it is checked.

Every entry says the file a user downloads, the official page to get it from and the command that
installs it, so a missing asset always produces an actionable message.
"""
from __future__ import annotations

from dataclasses import dataclass

FLAME_PAGE = "https://flame.is.tue.mpg.de/download.php"
DECA_PAGE = "https://deca.is.tue.mpg.de/download.php"
DECA_DATA_PAGE = "https://github.com/yfeng95/DECA/tree/master/data"


@dataclass(frozen=True)
class AssetSpec:
    name: str  # key in the registry
    installed_as: str  # path under the asset home
    download_name: str  # what the user downloads
    page: str
    install_flag: str  # the `assets install` option that takes it
    required: bool = True
    description: str = ""

    def install_command(self) -> str:
        arg = "FOLDER" if self.install_flag == "--data" else "PATH"
        return f"deca-blender assets install {self.install_flag} {arg}"


FLAME_MODEL = AssetSpec(
    "flame_model", "flame/flame_model.npz", "generic_model.pkl (FLAME 2020) or flame2023_Open.pkl", FLAME_PAGE,
    "--flame", description="FLAME head model, converted to the compact .npz form on install",
)
DECA_MODEL = AssetSpec(
    "deca_model", "deca/deca_model.tar", "deca_model.tar", DECA_PAGE, "--deca",
    description="DECA's trained encoders and detail decoder (research licence)",
)
# Files of DECA's release data folder; `--data` takes the folder holding them.
HEAD_TEMPLATE = AssetSpec("head_template", "data/head_template.obj", "head_template.obj", DECA_DATA_PAGE, "--data",
                          description="FLAME mean head with DECA's UV layout")
LANDMARK_EMBEDDING = AssetSpec("landmark_embedding", "data/landmark_embedding.npz", "landmark_embedding.npy",
                               DECA_DATA_PAGE, "--data",
                               description="68-landmark embedding, converted from torch pickles to plain arrays")
UV_FACE_EYE_MASK = AssetSpec("uv_face_eye_mask", "data/uv_face_eye_mask.png", "uv_face_eye_mask.png", DECA_DATA_PAGE,
                             "--data", description="UV region where details apply")
UV_FACE_MASK = AssetSpec("uv_face_mask", "data/uv_face_mask.png", "uv_face_mask.png", DECA_DATA_PAGE, "--data",
                         description="UV face region")
FIXED_DISPLACEMENT = AssetSpec("fixed_displacement", "data/fixed_displacement_256.npy", "fixed_displacement_256.npy",
                               DECA_DATA_PAGE, "--data", description="static displacement added to every detail map")
MEAN_TEXTURE = AssetSpec("mean_texture", "data/mean_texture.jpg", "mean_texture.jpg", DECA_DATA_PAGE, "--data",
                         description="mean albedo in UV space")
TEXTURE_SPACE = AssetSpec("texture_space", "flame/texture_space.npz", "FLAME_albedo_from_BFM.npz or FLAME_texture.npz",
                          FLAME_PAGE, "--texture", required=False,
                          description="optional FLAME albedo space; without it the photo's texture is unwrapped")

DATA_FILES = (HEAD_TEMPLATE, LANDMARK_EMBEDDING, UV_FACE_EYE_MASK, UV_FACE_MASK, FIXED_DISPLACEMENT, MEAN_TEXTURE)
ALL_ASSETS = (FLAME_MODEL, DECA_MODEL) + DATA_FILES + (TEXTURE_SPACE,)
BY_NAME = {a.name: a for a in ALL_ASSETS}
