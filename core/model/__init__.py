"""The face model every stage shares: FLAME + landmark embedding + renderer + the DECA texture space.

Inference (`core.pipeline`), fitting (`core.fitting`), training and evaluation all build their faces from
`core.model.face_model.FaceModel`; none of them depends on another to get it.
"""
