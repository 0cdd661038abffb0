"""intermod.preprocessing: the one normalisation, bit for bit what TorchIO computed, the same in training
(the data module's transform) and in registration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio
from omegaconf import OmegaConf

from intermod.data.datamodule import Normalisation, PairedDataModule
from intermod.preprocessing import CT_WINDOW, MR_PERCENTILES, normalise_ct, normalise_mr

CONF_PREPROCESSING = Path(__file__).resolve().parents[1] / "conf" / "data" / "preprocessing" / "default.yaml"


def volumes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT in HU (air, soft tissue, bone, below-air padding) and an MR with a bright tail, float32."""
    rng = np.random.default_rng(seed)
    ct = rng.choice([-2048.0, -1000.0, 40.0, 900.0], size=(23, 19, 17)) + rng.normal(0, 60, (23, 19, 17))
    mr = rng.gamma(2.0, 150.0, size=(23, 19, 17))
    return ct.astype(np.float32), mr.astype(np.float32)


def torchio_pipeline(ct_window, mr_percentiles) -> tio.Compose:
    """The normalisation as the data module built it before intermod.preprocessing (checkpoints trained on it)."""
    low, high = ct_window
    return tio.Compose([tio.Clamp(low, high, include=["ct"]),
                        tio.RescaleIntensity((0, 1), in_min_max=(low, high), include=["ct"]),
                        tio.RescaleIntensity((0, 1), percentiles=tuple(mr_percentiles), include=["mr"]),
                        tio.Clamp(0, 1, include=["mr"])])


def subject(ct: np.ndarray, mr: np.ndarray) -> tio.Subject:
    return tio.Subject(ct=tio.ScalarImage(tensor=torch.from_numpy(ct)[None]),
                       mr=tio.ScalarImage(tensor=torch.from_numpy(mr)[None]))


@pytest.mark.parametrize("ct_window, mr_percentiles", [(CT_WINDOW, MR_PERCENTILES), ((-1000.0, 1000.0), (2, 98))])
def test_normalisation_is_torchio_s_bit_for_bit(ct_window, mr_percentiles):
    ct, mr = volumes()
    expected = torchio_pipeline(ct_window, mr_percentiles)(subject(ct, mr))
    np.testing.assert_array_equal(normalise_ct(ct, ct_window), expected["ct"].data[0].numpy())
    np.testing.assert_array_equal(normalise_mr(mr, mr_percentiles), expected["mr"].data[0].numpy())


def test_the_numbers_are_the_window_and_the_percentiles():
    ct, mr = volumes()
    ct_n, mr_n = normalise_ct(ct), normalise_mr(mr)
    assert ct_n.dtype == mr_n.dtype == np.float32
    # -160 HU -> 0, 240 HU -> 1, water (0 HU) -> 0.4
    np.testing.assert_allclose(normalise_ct(np.array([-3000.0, -160.0, 0.0, 240.0, 3000.0])), [0, 0, 0.4, 1, 1])
    assert ct_n.min() == 0.0 and ct_n.max() == 1.0
    low, high = np.percentile(mr, MR_PERCENTILES)
    inside = (mr > low) & (mr < high)
    np.testing.assert_allclose(mr_n[inside], (mr[inside] - low) / (high - low), rtol=1e-5)
    assert np.mean(mr_n == 1.0) == pytest.approx(0.005, abs=0.002)  # the top 0.5 % clipped


def test_a_constant_mr_is_left_as_torchio_left_it():
    mr = np.full((6, 5, 4), 0.25, np.float32)
    with pytest.warns(RuntimeWarning):
        expected = torchio_pipeline(CT_WINDOW, MR_PERCENTILES)(subject(mr, mr))["mr"].data[0].numpy()
    with pytest.warns(RuntimeWarning, match="constant"):
        np.testing.assert_array_equal(normalise_mr(mr), expected)


def test_training_and_registration_normalise_a_volume_identically():
    """The data module's TorchIO transform (training, validation, test) and registration's normalise."""
    from intermod.registration import normalise

    ct, mr = volumes(seed=1)
    model = type("Model", (), {"ct_window": CT_WINDOW, "mr_percentiles": MR_PERCENTILES})  # what normalise reads
    ct_r, mr_r = normalise(ct, mr, model)
    trained = Normalisation()(tio.Subject(ct=tio.ScalarImage(tensor=torch.from_numpy(ct)[None]),
                                          ct_paired=tio.ScalarImage(tensor=torch.from_numpy(ct)[None]),
                                          mr=tio.ScalarImage(tensor=torch.from_numpy(mr)[None]),
                                          mr_paired=tio.ScalarImage(tensor=torch.from_numpy(mr)[None])))
    assert ct_r.shape == mr_r.shape == (1, 1, *ct.shape) and ct_r.dtype == torch.float32
    for key, registered in (("ct", ct_r), ("ct_paired", ct_r), ("mr", mr_r), ("mr_paired", mr_r)):
        torch.testing.assert_close(trained[key].data[None], registered, rtol=0, atol=0)


def test_defaults_are_defined_once_and_the_config_repeats_them():
    normalisation = PairedDataModule("unused").normalise
    assert (normalisation.ct_window, normalisation.mr_percentiles) == (CT_WINDOW, MR_PERCENTILES)
    data = OmegaConf.load(CONF_PREPROCESSING)
    assert tuple(data.ct_window) == CT_WINDOW and tuple(data.mr_percentiles) == MR_PERCENTILES
