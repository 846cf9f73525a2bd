"""Fitting mode: FLAME fitted to photos by analysis by synthesis, without DECA's regressor.

- `landmark_fit`: stage 1, pose/camera/shape/expression from 68 landmarks (Levenberg-Marquardt, priors);
- `photometric_fit`: stage 2, photometric refinement with the project's renderer (albedo, SH light);
- `detail`: the static displacement from shading of fit-only results;
- `fitter`: `Fitter`, photo -> result folder (also ``--same-person`` and ``deca+fit``);
- `writer`: the result folder (same layout as ``reconstruct``'s).

Importing this package imports nothing heavy.
"""
