"""Control images: what is shown beside the adversarial image to ask what its effect depends on.

Each control keeps one property of the adversarial perturbation and destroys another, so the
trial types that show it separate explanations of a bias:

* ``flip``: the same perturbation turned upside down (its pixel statistics and its energy, but
  not its alignment with the photo);
* ``noise``: random +/-eps per pixel (the budget, nothing of the perturbation);
* ``phase``: per channel, the perturbation's 2-D Fourier amplitudes with random phases (its
  energy at every spatial frequency and orientation, but not its structure, so not its
  direction toward the category), scaled to use the same L-infinity budget.

Every control is saved under the rule of the adversarial images: clean + delta rounded to whole
8-bit levels and clipped to [0, 255], so the saved file is within its budget after rounding
(the caller checks every file again before saving it).
"""
from __future__ import annotations

import numpy as np


def flip_control(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The adversarial perturbation of ``adversarial`` (uint8, C x H x W) turned upside down, added to ``clean``."""
    delta = adversarial.astype(np.int16) - clean.astype(np.int16)
    return np.clip(clean.astype(np.int16) + delta[:, ::-1, :], 0, 255).astype(np.uint8)


def noise_control(clean: np.ndarray, eps: int, signs: np.ndarray) -> np.ndarray:
    """``clean`` plus ``eps`` times ``signs`` (+/-1 per pixel), clipped to [0, 255]."""
    return np.clip(clean.astype(np.int16) + signs.astype(np.int16) * int(eps), 0, 255).astype(np.uint8)


def random_phases(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Fourier phases of real white noise, one field per channel: uniform, and Hermitian-symmetric.

    The phases of the 2-D FFT of a real signal satisfy ``phi(-k) = -phi(k)``, which is exactly
    what makes amplitudes times ``exp(i phi)`` transform back to a real image; drawing them as the
    phases of real Gaussian noise gets that symmetry (and the real DC and Nyquist terms) for free.
    """
    noise = np.random.default_rng(seed).standard_normal(shape)
    return np.angle(np.fft.fft2(noise, axes=(-2, -1)))


def phase_randomise(delta: np.ndarray, eps: int, seed: int) -> np.ndarray:
    """A real perturbation with the per-channel Fourier amplitudes of ``delta`` (C x H x W) and random phases.

    Scaled by one factor for all channels so that its largest absolute value is exactly
    ``eps``: the amplitude spectrum is ``delta``'s times that factor, the L-infinity budget the
    same. A ``delta`` of zeros stays zero. Returns float64; rounding is the caller's.
    """
    delta = np.asarray(delta, dtype=np.float64)
    amplitude = np.abs(np.fft.fft2(delta, axes=(-2, -1)))
    spectrum = amplitude * np.exp(1j * random_phases(delta.shape, seed))
    out = np.fft.ifft2(spectrum, axes=(-2, -1)).real  # the imaginary part is rounding error only
    peak = float(np.abs(out).max())
    return out * (float(eps) / peak) if peak > 0 else out


def phase_control(clean: np.ndarray, adversarial: np.ndarray, eps: int, seed: int) -> np.ndarray:
    """The phase-randomised control of one adversarial image (uint8, C x H x W), saved as clean + rounded delta."""
    delta = adversarial.astype(np.int16) - clean.astype(np.int16)
    randomised = np.rint(phase_randomise(delta, eps, seed))
    randomised = np.clip(randomised, -int(eps), int(eps))  # |x| <= eps before rounding; guard float ties
    return np.clip(clean.astype(np.int16) + randomised.astype(np.int16), 0, 255).astype(np.uint8)
