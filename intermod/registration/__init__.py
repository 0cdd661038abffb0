"""Register an MR image to a CT image with a trained network: the pipeline behind ``intermod-register``.

Stages, each a function usable from Python:

1. :func:`load_model` and :func:`intermod.geometry.read_image` validate the inputs;
2. :func:`intermod.geometry.reference_grid`: the grid the model was trained on (spacing, orientation
   from the checkpoint) over the CT's field of view; CT padding is clipped to air;
3. :func:`prealign`: an ANTs affine (Mattes MI) started from the best of an orientation search, which
   survives scans 180 degrees apart (head-first vs feet-first);
4. the network predicts the deformable field on the model grid (:func:`intermod.inference.predict_field`);
5. :func:`compose_field`: affine + deformable as one LPS displacement field on the CT's own grid, applied
   with ITK's ``DisplacementFieldTransform`` (the way ANTs, SimpleITK and 3D Slicer apply the file);
6. :func:`write_outputs`: every file into a temporary folder beside the output folder, moved into place
   only once all of them are written.

:func:`register_files` runs them all; :func:`register_images` is the in-memory part (stages 2-5).
"""
from intermod.registration.model import UNET_TARGET, Model, load_model, select_device
from intermod.registration.outputs import OUTPUT_NAMES, RegistrationResult, write_outputs
from intermod.registration.pipeline import (MI_MAX_VOXELS, MIN_OVERLAP, compose_field, normalise, register_files,
                                            register_images)
from intermod.registration.prealign import AFFINE_SPACING_MM, AIR_HU, ORIENTATIONS, SEARCH_SPACING_MM, prealign

__all__ = ["Model", "RegistrationResult", "select_device", "load_model", "prealign", "compose_field",
           "register_images", "normalise", "write_outputs", "register_files", "OUTPUT_NAMES", "UNET_TARGET", "AIR_HU",
           "ORIENTATIONS", "SEARCH_SPACING_MM", "AFFINE_SPACING_MM", "MIN_OVERLAP", "MI_MAX_VOXELS"]
