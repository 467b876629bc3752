"""Synthetic multi-band light curves of transients and variable sources.

The generator draws objects of five labelled classes, as a time-domain
survey such as Rubin/LSST would see them in its ``ugrizy`` bands:

* ``SN Ia``: Bazin-shaped rise of 15-20 d and decline of 30-40 d (faster in
  the blue, so the colour reddens with time), peak magnitude 20-23.
* ``SN II``: a quick rise onto an 80-100 d plateau that fades slowly in the
  red and fast in the blue, then a drop of about two magnitudes.
* ``variable star``: a periodic pulsator (sinusoid or sawtooth) with a period
  of 0.3-30 d and an amplitude of 0.2-1 mag, larger in the blue.
* ``AGN``: a damped random walk with a small amplitude (0.1-0.35 mag) and a
  long damping timescale (100-1000 d), shared by all bands.
* ``kilonova``: a rise shorter than 2 d, a decline of 2-5 d that is much
  faster in the blue than in the red.

Each object gets a fixed number of measurements at irregular times inside a
class-dependent observing window, in bands drawn with survey-like
frequencies.  Fluxes are in nanojansky (AB magnitude 31.4 is 1 nJy); the
uncertainties follow a sky-limited noise model built from the single-visit
5-sigma depths plus source photon noise and a calibration floor, so the
magnitude error grows towards faint magnitudes.

Everything is drawn from one :func:`numpy.random.default_rng` stream, so a
seed reproduces the same objects on every run and platform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput

__all__ = [
    "AB_ZEROPOINT_NJY",
    "BANDS",
    "CLASSES",
    "LightCurve",
    "flux_to_mag",
    "mag_to_flux",
    "simulate",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: The labelled classes, in the order classifiers report them.
CLASSES: tuple[str, ...] = ("SN Ia", "SN II", "variable star", "AGN", "kilonova")

#: The Rubin/LSST filters, blue to red.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")

#: AB magnitude of a 1 nJy source: ``m = 31.4 - 2.5 log10(flux / nJy)``.
AB_ZEROPOINT_NJY = 31.4

# Single-visit 5-sigma point-source depths (AB mag) from the LSST design.
_DEPTH_5SIGMA = (23.9, 25.0, 24.7, 24.0, 23.3, 22.1)
# Share of visits per band: survey-like, with g and r a little favoured so
# that most objects have the colours a broker looks at.
_BAND_SHARE = (0.08, 0.17, 0.23, 0.22, 0.17, 0.13)
# Visit-to-visit scatter of the depth (seeing, sky brightness), mag.
_DEPTH_SCATTER = 0.2
# Relative calibration error that bounds the SNR of bright sources.
_CALIBRATION_FLOOR = 0.005
# Earliest MJD (2025) and length (ten years) of the simulated survey.
_SURVEY_START_MJD = 60_800.0
_SURVEY_DAYS = 3_650.0


@dataclass(frozen=True)
class LightCurve:
    """The measurements of one object, sorted by time.

    ``band`` holds one-letter filter names; ``flux`` and ``flux_err`` are in
    nanojansky and may be negative for faint sources, as forced photometry is.
    """

    object_id: int
    label: str
    mjd: FloatArray
    band: npt.NDArray[np.str_]
    flux: FloatArray
    flux_err: FloatArray

    def __post_init__(self) -> None:
        sizes = {len(self.mjd), len(self.band), len(self.flux), len(self.flux_err)}
        if len(sizes) != 1:
            raise InvalidInput(
                f"light curve {self.object_id}: mjd, band, flux and flux_err differ in length"
            )

    def __len__(self) -> int:
        return len(self.mjd)


def mag_to_flux(mag: npt.ArrayLike) -> FloatArray:
    """AB magnitude to flux in nJy."""
    return np.asarray(10.0 ** ((AB_ZEROPOINT_NJY - np.asarray(mag, dtype=np.float64)) / 2.5))


def flux_to_mag(flux: npt.ArrayLike) -> FloatArray:
    """Flux in nJy to AB magnitude; non-positive fluxes give ``nan``."""
    flux = np.asarray(flux, dtype=np.float64)
    positive = flux > 0
    safe = np.where(positive, flux, 1.0)
    return np.where(positive, AB_ZEROPOINT_NJY - 2.5 * np.log10(safe), np.nan)


def simulate(
    n: int,
    *,
    seed: int,
    n_detections: int = 30,
    classes: Sequence[str] = CLASSES,
) -> list[LightCurve]:
    """Draw ``n`` light curves, as evenly spread over ``classes`` as ``n`` allows.

    Every object has exactly ``n_detections`` measurements.  Objects come in
    a shuffled class order and are numbered ``0 … n-1``.  The result depends
    only on the arguments.
    """
    if n < 0:
        raise InvalidInput(f"cannot simulate {n} objects")
    if n_detections < 1:
        raise InvalidInput(f"each object needs at least one detection, not {n_detections}")
    unknown = [c for c in classes if c not in _MODELS]
    if unknown or not classes:
        raise InvalidInput(f"unknown classes {unknown}; choose from {', '.join(CLASSES)}")

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(classes))
    curves: list[LightCurve | None] = [None] * n
    # One vectorised batch per class; classes are visited in a fixed order so
    # the random stream, and hence the output, is reproducible.
    for index, name in enumerate(classes):
        members = np.flatnonzero(labels == index)
        if members.size == 0:
            continue
        start, length = _WINDOWS[name](rng, members.size)
        t, band = _epochs(rng, start, length, n_detections)
        true_flux = _MODELS[name](rng, t, band)
        flux, flux_err = _observe(rng, true_flux, band)
        reference = rng.uniform(0.0, _SURVEY_DAYS, (t.shape[0], 1))
        mjd = _SURVEY_START_MJD + reference + t
        band_names = np.asarray(BANDS)[band]
        for row, object_id in enumerate(members):
            curves[object_id] = LightCurve(
                object_id=int(object_id),
                label=name,
                mjd=mjd[row],
                band=band_names[row],
                flux=flux[row],
                flux_err=flux_err[row],
            )
    return [curve for curve in curves if curve is not None]


# -- observing ---------------------------------------------------------------


def _epochs(
    rng: np.random.Generator, start: FloatArray, length: FloatArray, k: int
) -> tuple[FloatArray, IntArray]:
    """Sorted, irregular epochs (days from the reference) and band indices."""
    m = start.shape[0]
    t = np.sort(start[:, None] + length[:, None] * rng.random((m, k)), axis=1)
    band = rng.choice(len(BANDS), size=(m, k), p=np.asarray(_BAND_SHARE))
    return t, band


def _observe(
    rng: np.random.Generator, true_flux: FloatArray, band: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Add measurement noise; return ``(flux, flux_err)`` in nJy."""
    depth = np.asarray(_DEPTH_5SIGMA)[band] + rng.normal(0.0, _DEPTH_SCATTER, band.shape)
    sky = mag_to_flux(depth) / 5.0
    # Sky noise, source photon noise (equal to the sky noise for a source 25
    # times brighter than it) and calibration add in quadrature.
    variance = (
        sky**2 + sky * np.clip(true_flux, 0.0, None) / 25.0 + (_CALIBRATION_FLOOR * true_flux) ** 2
    )
    flux_err = np.sqrt(variance)
    return true_flux + flux_err * rng.standard_normal(true_flux.shape), flux_err


# -- observing windows, relative to the peak (transients) or arbitrary ------


def _window(
    start: tuple[float, float], length: tuple[float, float]
) -> Callable[[np.random.Generator, int], tuple[FloatArray, FloatArray]]:
    def draw(rng: np.random.Generator, m: int) -> tuple[FloatArray, FloatArray]:
        return rng.uniform(*start, m), rng.uniform(*length, m)

    return draw


_WINDOWS = MappingProxyType(
    {
        "SN Ia": _window(start=(-25.0, -5.0), length=(90.0, 150.0)),
        "SN II": _window(start=(-25.0, -5.0), length=(120.0, 200.0)),
        "variable star": _window(start=(0.0, 0.0), length=(150.0, 1200.0)),
        "AGN": _window(start=(0.0, 0.0), length=(150.0, 1200.0)),
        "kilonova": _window(start=(-2.0, 0.0), length=(8.0, 20.0)),
    }
)


# -- physical models: true flux in nJy at epochs ``t`` in bands ``band`` ------


def _per_band(values: tuple[float, ...], band: IntArray) -> FloatArray:
    return np.asarray(values, dtype=np.float64)[band]


def _bazin(t: FloatArray, tau_rise: FloatArray, tau_fall: FloatArray) -> FloatArray:
    """The Bazin et al. (2009) transient shape, scaled to peak at ``t = 0`` with value 1."""
    # Shift so the maximum falls at t = 0 whatever the two timescales are.
    ratio = np.maximum(tau_fall / tau_rise - 1.0, 1e-3)
    shift = tau_rise * np.log(ratio)
    x = t + shift
    # log(exp(-x/tau_fall) / (1 + exp(-x/tau_rise))), stable for any x.
    log_shape = -x / tau_fall - np.logaddexp(0.0, -x / tau_rise)
    log_peak = -shift / tau_fall - np.logaddexp(0.0, -shift / tau_rise)
    return np.exp(log_shape - log_peak)


def _sn_ia(rng: np.random.Generator, t: FloatArray, band: IntArray) -> FloatArray:
    m = t.shape[0]
    peak_mag = rng.uniform(20.0, 23.0, (m, 1))
    tau_rise = rng.uniform(3.0, 4.5, (m, 1))
    tau_fall = rng.uniform(30.0, 40.0, (m, 1))
    # Near peak a normal SN Ia has g - r ~ 0 and is faint in u and the far red;
    # the blue fades fastest, so the colour reddens after peak.
    offset = _per_band((0.8, 0.0, 0.0, 0.4, 0.5, 0.6), band)
    fall = tau_fall * _per_band((0.55, 0.75, 1.0, 1.15, 1.25, 1.3), band)
    return mag_to_flux(peak_mag + offset) * _bazin(t, tau_rise, fall)


def _sn_ii(rng: np.random.Generator, t: FloatArray, band: IntArray) -> FloatArray:
    m = t.shape[0]
    peak_mag = rng.uniform(20.5, 23.0, (m, 1))
    tau_rise = rng.uniform(1.0, 2.0, (m, 1))
    plateau = rng.uniform(80.0, 100.0, (m, 1))
    drop = rng.uniform(1.5, 2.5, (m, 1))
    drop_width = rng.uniform(2.0, 5.0, (m, 1))
    # Fading rate on the plateau, mag/day: hot and blue at first, so the blue
    # bands decline fast while the red ones stay almost flat.
    fade = _per_band((0.05, 0.02, 0.008, 0.005, 0.004, 0.004), band)
    offset = _per_band((0.1, 0.0, 0.1, 0.2, 0.3, 0.4), band)
    after = np.clip(t, 0.0, None)
    mag = (
        peak_mag
        + offset
        + fade * after
        + drop / (1.0 + np.exp(-np.clip((t - plateau) / drop_width, -50.0, 50.0)))
        + 0.01 * np.clip(t - plateau, 0.0, None)  # radioactive tail
    )
    # The rise reaches 98 % of the plateau at t = 0.
    rise = 1.0 / (1.0 + np.exp(-np.clip(t / tau_rise + 4.0, -50.0, 50.0)))
    return mag_to_flux(mag) * rise


def _variable_star(rng: np.random.Generator, t: FloatArray, band: IntArray) -> FloatArray:
    m = t.shape[0]
    mean_mag = rng.uniform(17.5, 21.5, (m, 1))
    g_minus_r = rng.uniform(0.1, 0.9, (m, 1))
    period = np.exp(rng.uniform(np.log(0.3), np.log(30.0), (m, 1)))
    amplitude = rng.uniform(0.2, 1.0, (m, 1))
    sawtooth = rng.random((m, 1)) < 0.5
    phase = (t / period + rng.random((m, 1))) % 1.0
    # Brightness in [-1, 1]: a sinusoid, or the fast-rise / slow-decline
    # sawtooth of an RR Lyrae or Cepheid.
    ramp = np.where(phase < 0.15, phase / 0.15, (1.0 - phase) / 0.85)
    bright = np.where(sawtooth, 2.0 * ramp - 1.0, np.sin(2.0 * np.pi * phase))
    offset = g_minus_r * _per_band((2.2, 1.0, 0.0, -0.35, -0.55, -0.65), band)
    scale = _per_band((1.4, 1.2, 1.0, 0.85, 0.75, 0.7), band)
    return mag_to_flux(mean_mag + offset - 0.5 * amplitude * scale * bright)


def _agn(rng: np.random.Generator, t: FloatArray, band: IntArray) -> FloatArray:
    m, k = t.shape
    mean_mag = rng.uniform(19.0, 22.5, (m, 1))
    tau = np.exp(rng.uniform(np.log(100.0), np.log(1000.0), m))
    sigma = rng.uniform(0.1, 0.35, m) / np.sqrt(2.0)  # SF_inf / sqrt(2)
    # Exact damped-random-walk (Ornstein-Uhlenbeck) updates at the epochs;
    # one latent walk drives every band.
    walk = np.empty((m, k))
    walk[:, 0] = sigma * rng.standard_normal(m)
    for j in range(1, k):
        decay = np.exp(-(t[:, j] - t[:, j - 1]) / tau)
        kick = sigma * np.sqrt(1.0 - decay**2) * rng.standard_normal(m)
        walk[:, j] = walk[:, j - 1] * decay + kick
    offset = _per_band((0.3, 0.2, 0.0, -0.1, -0.15, -0.2), band)
    scale = _per_band((1.3, 1.15, 1.0, 0.9, 0.8, 0.75), band)
    return mag_to_flux(mean_mag + offset + scale * walk)


def _kilonova(rng: np.random.Generator, t: FloatArray, band: IntArray) -> FloatArray:
    m = t.shape[0]
    peak_mag = rng.uniform(20.0, 23.0, (m, 1))
    tau_rise = rng.uniform(0.2, 0.5, (m, 1))
    tau_fall = rng.uniform(2.0, 5.0, (m, 1))
    # The blue, lanthanide-poor ejecta cool within days: u and g fade several
    # times faster than z and y.
    offset = _per_band((0.3, 0.0, 0.0, 0.1, 0.2, 0.3), band)
    fall = tau_fall * _per_band((0.35, 0.5, 0.8, 1.0, 1.3, 1.5), band)
    return mag_to_flux(peak_mag + offset) * _bazin(t, tau_rise, fall)


_FluxModel = Callable[[np.random.Generator, FloatArray, IntArray], FloatArray]

_MODELS: Mapping[str, _FluxModel] = MappingProxyType(
    {
        "SN Ia": _sn_ia,
        "SN II": _sn_ii,
        "variable star": _variable_star,
        "AGN": _agn,
        "kilonova": _kilonova,
    }
)
