"""Make the paired data of Cao et al. (2018, Section 3): ``mr_paired`` and ``ct_paired`` per subject.

The paper made its paired data by "fine-tuning the roughly aligned CT and MR images of the same
subject": a non-rigid SyN registration, then Demons on the manual labels of the organs, "after that,
the boundaries of the anatomical structures are well aligned". ``pair_dataset`` does the same with
ANTs, one subject at a time, the CT fixed and the MR moving:

1. ``affine`` (only with ``affine=True``, for data not yet aligned): ANTs Affine, Mattes MI, the
   schedule of ``intermod.baselines.ants``. The MR and its labels are resampled onto the CT grid
   through it. Without it the MR is resampled onto the CT grid in scanner coordinates (identity),
   which is a no-op when the MR already lies on the CT grid.
2. ``syn``: ANTs SyN (``SyNOnly`` after the step above), Mattes MI, the SyN schedule and
   regularisation of the baseline ("SyN (ANTs, MI)" of Table 1).
3. ``labels``: the label-driven refinement. Our choice for the paper's Demons: ANTs SyN with a
   mean-squares metric on one-hot organ maps, one metric per organ (multivariate), the maps smoothed
   by a Gaussian of ``LABEL_SMOOTHING`` voxels so boundaries have sub-voxel positions and gradients.
   Mean squares on label maps gives the Demons force (intensity difference times gradient); the SyN
   transform keeps the result diffeomorphic and, unlike SimpleITK's Demons filters, gives its
   inverse and handles any number of organs at once. Regularisation is lighter than in stage 2
   (update field smoothed by 1 voxel, not 3) so that organ boundaries can meet to sub-voxel accuracy;
   forces exist only near organ boundaries, elsewhere the SyN field of stage 2 is kept.

Datasets whose dataset.json says ``"label_free": true`` (the body mask stands in for labels, see
``intermod.importers``) skip stage 3: the pairing is image-only.

What is written (``dst``, the dataset layout of ``intermod.data.layout``):

* ``<subject>/`` with ``ct``, ``ct_labels`` (copied), ``mr``, ``mr_labels`` (on the CT grid, after
  stage 1), ``mr_paired`` (the MR through stages 1-3: MR intensities on the CT's anatomy) and
  ``ct_paired`` (the CT through the inverse of stages 2-3: CT intensities on the MR's anatomy, on the
  same grid). A ``ct_paired`` or ``mr_paired`` the source provides (dataset.json
  ``"provided_pairs"``, e.g. the Gold Atlas' deformed CT) is copied instead of made.
* ``<subject>/transforms/``: ``mr_to_ct_warp.nii.gz`` (stages 2-3 composed) and
  ``ct_to_mr_warp.nii.gz`` (their inverse), ITK/ANTs displacement fields on the CT grid (LPS mm), and
  with ``affine=True`` ``mr_to_ct_affine.mat`` (stage 1, ITK format). With ANTsPy,
  ``ants.apply_transforms(ct, mr_source, [mr_to_ct_warp, mr_to_ct_affine])`` gives ``mr_paired``
  (without the affine, ``mr`` in place of ``mr_source``) and
  ``ants.apply_transforms(ct, ct, [ct_to_mr_warp])`` gives ``ct_paired``.
* ``<subject>/pairing.json``: the subject's quality record; its presence marks a finished subject.
* ``pairing_report.json`` and ``dataset.json`` (with a ``"pairing"`` entry naming flagged subjects).

Quality gate. Per subject and organ, the Dice of the CT labels with the MR labels carried onto the
CT's anatomy (``mr_paired`` direction) and of the MR labels with the CT labels carried onto the MR's
anatomy (``ct_paired`` direction), labels resampled with ANTs' ``genericLabel``. A subject whose
lowest Dice is below ``threshold`` is flagged: still written, and named in the report and in
dataset.json. Label-free subjects get no Dice and are never flagged; their record says so
(``"gate": "image"``) and carries the image measures every subject gets: the mutual information of
CT and MR before and after pairing (stage 2 maximises it), and ``ncc_consistency``, the NCC of the CT
and ``ct_paired`` warped back by the ``mr_paired`` field (the paper's CT loss term at the pairing
field: near 1 when the two pairs describe one deformation). The folding of both fields is recorded.

Determinism and clean-up. Each subject runs in a fresh Python process with ITK's thread count set
before ANTs is imported and ANTs' seed fixed (see ``intermod.baselines.ants``): with one thread the
result is bit-identical for a seed. ANTs writes into a private temporary folder, removed afterwards
(also on error). A subject is built in a hidden staging folder inside ``dst`` and renamed into place
when complete, so an interrupted run leaves no half-written subject; staging folders left by a
killed run are removed by the next run. Finished subjects are skipped unless ``force``. One run per
``dst`` at a time.
"""
from intermod.pairing.dataset import (DEFAULT_THRESHOLD, RECORD, REPORT, PairingInputError, PairingOptions,
                                      format_report, measure_pairing, min_dice, organ_dice, pair_dataset)
from intermod.pairing.stages import METHOD, TRANSFORMS_DIR, run_pairing_job

__all__ = ["DEFAULT_THRESHOLD", "RECORD", "REPORT", "PairingInputError", "PairingOptions", "format_report",
           "measure_pairing", "min_dice", "organ_dice", "pair_dataset", "METHOD", "TRANSFORMS_DIR", "run_pairing_job"]
