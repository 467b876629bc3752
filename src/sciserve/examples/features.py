"""Light-curve features of the kind an alert broker computes for every object.

:func:`extract` summarises one :class:`~sciserve.examples.lightcurves.LightCurve`
as a fixed-length ``float32`` vector, in the order of :data:`FEATURE_NAMES`.
The statistics are cheap and robust rather than clever: they treat all bands
together (except the colours), need no model fit, and never return ``nan``
or ``inf``: a missing band, a single measurement or a flat curve give
documented fall-back values instead.  :data:`FEATURES` lists the unit and
meaning of each one.

"Peak" below is the measurement with the largest flux, whatever its band.
Fluxes are in nJy and times in days.  The feature set is versioned as
:data:`FEATURE_SET`: models trained on it must be fed exactly these columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .lightcurves import LightCurve

__all__ = ["FEATURES", "FEATURE_NAMES", "FEATURE_SET", "Feature", "extract", "extract_many"]

#: The name models record in ``compatible_with`` to say which features they read.
FEATURE_SET = "sciserve.examples.features v1"

FloatArray = npt.NDArray[np.float64]


class Feature(NamedTuple):
    """One column of the feature vector."""

    name: str
    unit: str
    description: str


#: Every feature, in column order.
FEATURES: tuple[Feature, ...] = (
    Feature("n_detections", "count", "number of measurements"),
    Feature("time_span", "d", "time between the first and the last measurement"),
    Feature("log_peak_flux", "log10(nJy)", "largest flux, floored at 1 nJy"),
    Feature("log_median_flux", "log10(nJy)", "median flux, floored at 1 nJy"),
    Feature("rise_time", "d", "from the last point below half the peak flux to the peak"),
    Feature("decline_time", "d", "from the peak to the first later point below half its flux"),
    Feature("peak_phase", "1", "fraction of the time span elapsed at the peak"),
    Feature("amplitude", "mag", "95th over 5th flux percentile, floored at the median error"),
    Feature("std_over_mean", "1", "standard deviation of the flux over its absolute mean"),
    Feature("skew", "1", "sample skewness of the flux"),
    Feature("beyond_1sigma", "1", "fraction of fluxes more than one standard deviation off"),
    Feature("stetson_j", "log10", "Stetson J index of consecutive pairs, as sign*log10(1+|J|)"),
    Feature("log_reduced_chi2", "log10", "reduced chi-squared about the weighted mean flux"),
    Feature("von_neumann_ratio", "1", "mean squared successive difference over the variance"),
    Feature("slope_before_peak", "1/d", "least-squares slope up to the peak, in peak fluxes"),
    Feature("slope_after_peak", "1/d", "least-squares slope from the peak on, in peak fluxes"),
    Feature("log_max_rate", "log10(1/d)", "fastest change between consecutive points"),
    Feature("g_r_at_peak", "mag", "g - r colour interpolated at the peak time"),
    Feature("r_i_at_peak", "mag", "r - i colour interpolated at the peak time"),
    Feature("g_r_change", "mag", "g - r ten days after the peak minus g - r at the peak"),
    Feature("log_median_snr", "log10", "median flux over error, floored at 0.01"),
)

#: Column names of :func:`extract`'s output.
FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in FEATURES)

# Every feature is clipped to this magnitude, so a pathological curve cannot
# produce values that overflow float32 or dominate a standardisation.
_LIMIT = 1e6
# Consecutive points closer than this (d) are the same night; their flux
# difference is colour or noise, not a rate of change.
_MIN_GAP = 0.1
# Colours: how far after the peak to measure the colour change (d) and the
# largest colour reported (mag).
_COLOUR_DELAY = 10.0
_COLOUR_LIMIT = 5.0


def extract(lc: LightCurve) -> npt.NDArray[np.float32]:
    """The feature vector of ``lc``, shaped ``(len(FEATURE_NAMES),)``.

    Measurements need not be sorted.  An empty light curve gives zeros.
    """
    order = np.argsort(np.asarray(lc.mjd, dtype=np.float64), kind="stable")
    t = np.asarray(lc.mjd, dtype=np.float64)[order]
    band = np.asarray(lc.band)[order]
    flux = np.nan_to_num(np.asarray(lc.flux, dtype=np.float64)[order])
    err = np.nan_to_num(np.abs(np.asarray(lc.flux_err, dtype=np.float64)[order]))
    if t.size == 0:
        return np.zeros(len(FEATURES), dtype=np.float32)
    # A zero error would make weights and SNRs infinite; 0.1 % of the flux
    # (or 1 nJy) is far below any real measurement's error.
    err = np.maximum(err, np.maximum(1e-3 * np.abs(flux), 1.0))

    with np.errstate(all="ignore"):
        values = _compute(t, band, flux, err)
    vector = np.array([values[name] for name in FEATURE_NAMES], dtype=np.float64)
    vector = np.clip(np.nan_to_num(vector, nan=0.0, posinf=_LIMIT, neginf=-_LIMIT), -_LIMIT, _LIMIT)
    return vector.astype(np.float32)


def extract_many(lcs: Iterable[LightCurve]) -> npt.NDArray[np.float32]:
    """Features of many light curves, shaped ``(n, len(FEATURE_NAMES))``."""
    rows = [extract(lc) for lc in lcs]
    if not rows:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    return np.stack(rows)


def _compute(
    t: FloatArray, band: npt.NDArray[np.str_], flux: FloatArray, err: FloatArray
) -> dict[str, float]:
    n = t.size
    span = float(t[-1] - t[0])
    peak = int(np.argmax(flux))
    t_peak = float(t[peak])
    noise = float(np.median(err))
    # The peak as a scale for slopes and rates, never below the noise level.
    peak_scale = max(float(flux[peak]), noise)
    mean = float(np.mean(flux))
    std = float(np.std(flux))
    hi, lo = np.percentile(flux, [95.0, 5.0])

    rise, decline = _half_width(t, flux, peak)
    g_r = _colour(t, band, flux, err, "g", "r", t_peak)
    g_r_late = _colour(t, band, flux, err, "g", "r", t_peak + _COLOUR_DELAY)
    r_i = _colour(t, band, flux, err, "r", "i", t_peak)
    return {
        "n_detections": float(n),
        "time_span": span,
        "log_peak_flux": np.log10(max(float(flux[peak]), 1.0)),
        "log_median_flux": np.log10(max(float(np.median(flux)), 1.0)),
        "rise_time": rise,
        "decline_time": decline,
        "peak_phase": (t_peak - float(t[0])) / span if span > 0 else 0.0,
        "amplitude": 2.5 * np.log10(max(float(hi), noise) / max(float(lo), noise)),
        "std_over_mean": std / max(abs(mean), noise),
        "skew": float(np.mean(((flux - mean) / std) ** 3)) if std > 0 else 0.0,
        "beyond_1sigma": float(np.mean(np.abs(flux - mean) > std)) if std > 0 else 0.0,
        "stetson_j": _stetson_j(flux, err),
        "log_reduced_chi2": _log_reduced_chi2(flux, err),
        "von_neumann_ratio": _von_neumann(flux),
        "slope_before_peak": _slope(t[: peak + 1], flux[: peak + 1]) / peak_scale,
        "slope_after_peak": _slope(t[peak:], flux[peak:]) / peak_scale,
        "log_max_rate": _log_max_rate(t, flux, peak_scale),
        "g_r_at_peak": g_r if g_r is not None else 0.0,
        "r_i_at_peak": r_i if r_i is not None else 0.0,
        "g_r_change": g_r_late - g_r if g_r is not None and g_r_late is not None else 0.0,
        "log_median_snr": np.log10(max(float(np.median(flux / err)), 0.01)),
    }


def _half_width(t: FloatArray, flux: FloatArray, peak: int) -> tuple[float, float]:
    """Rise and decline time: how long the flux stays above half the peak.

    When the curve never drops below half the peak on one side, the time to
    the first (or last) measurement is the best lower bound available.
    """
    half = 0.5 * flux[peak]
    below_before = np.flatnonzero(flux[:peak] < half)
    below_after = np.flatnonzero(flux[peak + 1 :] < half)
    start = t[below_before[-1]] if below_before.size else t[0]
    end = t[peak + 1 + below_after[0]] if below_after.size else t[-1]
    return float(t[peak] - start), float(end - t[peak])


def _slope(t: FloatArray, y: FloatArray) -> float:
    """Ordinary least-squares slope; 0 for fewer than two distinct times."""
    dt = t - t.mean()
    denominator = float(np.sum(dt * dt))
    return float(np.sum(dt * (y - y.mean())) / denominator) if denominator > 0 else 0.0


def _stetson_j(flux: FloatArray, err: FloatArray) -> float:
    n = flux.size
    if n < 2:
        return 0.0
    weighted_mean = np.sum(flux / err**2) / np.sum(1.0 / err**2)
    delta = np.sqrt(n / (n - 1)) * (flux - weighted_mean) / err
    product = delta[:-1] * delta[1:]
    j = float(np.mean(np.sign(product) * np.sqrt(np.abs(product))))
    # J grows with the square of the SNR for bright variables; the log keeps
    # faint and bright objects on one scale.
    return float(np.sign(j) * np.log10(1.0 + abs(j)))


def _log_reduced_chi2(flux: FloatArray, err: FloatArray) -> float:
    if flux.size < 2:
        return 0.0
    weighted_mean = np.sum(flux / err**2) / np.sum(1.0 / err**2)
    chi2 = float(np.sum(((flux - weighted_mean) / err) ** 2)) / (flux.size - 1)
    return float(np.log10(max(chi2, 1e-3)))


def _von_neumann(flux: FloatArray) -> float:
    """About 2 for white noise, near 0 for a smooth (or well-sampled periodic) curve."""
    if flux.size < 2:
        return 0.0
    variance = float(np.var(flux, ddof=1))
    return float(np.mean(np.diff(flux) ** 2) / variance) if variance > 0 else 0.0


def _log_max_rate(t: FloatArray, flux: FloatArray, scale: float) -> float:
    dt = np.diff(t)
    apart = dt >= _MIN_GAP
    if not np.any(apart):
        return float(np.log10(1e-4))
    rate = np.abs(np.diff(flux))[apart] / dt[apart] / scale
    return float(np.log10(max(float(rate.max()), 1e-4)))


def _colour(
    t: FloatArray,
    band: npt.NDArray[np.str_],
    flux: FloatArray,
    err: FloatArray,
    blue: str,
    red: str,
    when: float,
) -> float | None:
    """``blue - red`` in mag at time ``when``, from each band's neighbouring points.

    Each band's flux is interpolated linearly between the measurements on
    either side of ``when`` (held constant beyond the first or last one) and
    floored at that band's typical error, so faint or negative fluxes still
    give a finite colour.  ``None`` when either band was never observed.
    """
    fluxes = []
    for name in (blue, red):
        chosen = band == name
        if not np.any(chosen):
            return None
        value = float(np.interp(when, t[chosen], flux[chosen]))
        fluxes.append(max(value, float(np.median(err[chosen]))))
    colour = -2.5 * np.log10(fluxes[0] / fluxes[1])
    return float(np.clip(colour, -_COLOUR_LIMIT, _COLOUR_LIMIT))
