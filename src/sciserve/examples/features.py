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

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from .lightcurves import LightCurve

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SET",
    "Feature",
    "Points",
    "extract",
    "extract_columns",
    "extract_many",
]

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


class Points(Protocol):
    """What the features read of a light curve (a :class:`LightCurve` has it)."""

    @property
    def mjd(self) -> npt.NDArray[np.float64]: ...
    @property
    def band(self) -> npt.NDArray[np.str_]: ...
    @property
    def flux(self) -> npt.NDArray[np.float64]: ...
    @property
    def flux_err(self) -> npt.NDArray[np.float64]: ...


def extract(lc: LightCurve | Points) -> npt.NDArray[np.float32]:
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


def extract_columns(curves: Sequence[Points]) -> npt.NDArray[np.float32]:
    """Features of many light curves at once, shaped ``(n, len(FEATURE_NAMES))``.

    The same statistics as :func:`extract`, computed for all curves together
    with array operations over the concatenated points instead of a few
    dozen small numpy calls per curve.  Values equal :func:`extract`'s up to
    rounding: sums run in a different order, so a feature may differ in its
    last float32 bits (the tests allow a relative 1e-5, absolute 1e-5), and
    a comparison with a threshold (``beyond_1sigma``, the half-peak times)
    could in principle tip the other way on a point lying exactly on it.
    """
    out = np.zeros((len(curves), len(FEATURES)), dtype=np.float32)
    filled = [i for i, curve in enumerate(curves) if len(curve.mjd) > 0]
    if filled:
        with np.errstate(all="ignore"):
            values = _Ragged([curves[i] for i in filled]).features()
        vector = np.stack([values[name] for name in FEATURE_NAMES], axis=1)
        vector = np.clip(
            np.nan_to_num(vector, nan=0.0, posinf=_LIMIT, neginf=-_LIMIT), -_LIMIT, _LIMIT
        )
        out[filled] = vector.astype(np.float32)
    return out


class _Ragged:
    """Points of many non-empty curves, concatenated and sorted by curve, then time."""

    def __init__(self, curves: Sequence[Points]) -> None:
        counts = np.array([len(c.mjd) for c in curves], dtype=np.int64)
        group = np.repeat(np.arange(len(curves)), counts)
        t = np.concatenate([np.asarray(c.mjd, dtype=np.float64) for c in curves])
        # lexsort is stable: equal times keep their order, as in extract.
        order = np.lexsort((t, group))
        self.n = counts
        self.starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self.ends = self.starts + counts
        self.group = group
        self.t = t[order]
        self.band = np.concatenate([np.asarray(c.band, dtype=np.str_) for c in curves])[order]
        flux = np.concatenate([np.asarray(c.flux, dtype=np.float64) for c in curves])[order]
        err = np.concatenate([np.asarray(c.flux_err, dtype=np.float64) for c in curves])[order]
        self.flux = np.nan_to_num(flux)
        err = np.nan_to_num(np.abs(err))
        self.err = np.maximum(err, np.maximum(1e-3 * np.abs(self.flux), 1.0))
        # Position of each point within its curve.
        self.pos = np.arange(len(self.t)) - self.starts[group]

    # -- grouped reductions (every group is non-empty) --------------------------

    def sum(self, values: FloatArray, mask: npt.NDArray[np.bool_] | None = None) -> FloatArray:
        if mask is not None:
            values = np.where(mask, values, 0.0)
        return np.add.reduceat(values, self.starts).astype(np.float64)

    def mean(self, values: FloatArray) -> FloatArray:
        return self.sum(values) / self.n

    def median(self, values: FloatArray, mask: npt.NDArray[np.bool_] | None = None) -> FloatArray:
        """Per-curve median of ``values`` (of the points in ``mask``); nan where none."""
        group = self.group if mask is None else self.group[mask]
        chosen = values if mask is None else values[mask]
        order = np.lexsort((chosen, group))
        ordered = chosen[order]
        counts = np.bincount(group, minlength=len(self.n))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        result = np.full(len(self.n), np.nan)
        some = counts > 0
        low = starts + (counts - 1) // 2
        high = starts + counts // 2
        result[some] = (ordered[low[some]] + ordered[high[some]]) / 2.0
        return result

    def percentile(self, values: FloatArray, q: float) -> FloatArray:
        """Per-curve percentile with linear interpolation, as :func:`numpy.percentile`."""
        order = np.lexsort((values, self.group))
        ordered = values[order]
        index = q / 100.0 * (self.n - 1)
        below = np.floor(index).astype(np.int64)
        above = np.minimum(below + 1, self.n - 1)
        fraction = index - below
        a, b = ordered[self.starts + below], ordered[self.starts + above]
        # numpy's lerp, which is exact at both ends.
        lerp: FloatArray = np.where(
            fraction >= 0.5, b - (b - a) * (1 - fraction), a + (b - a) * fraction
        )
        return lerp

    def first(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values[self.starts]

    def last(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values[self.ends - 1]

    def pairs(self) -> npt.NDArray[np.bool_]:
        """For each point but the last overall: whether the next point is of the same curve."""
        same: npt.NDArray[np.bool_] = self.group[:-1] == self.group[1:]
        return same

    def pair_sum(self, values: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
        """Per-curve sum over consecutive pairs (``values`` indexed by the pair's first point)."""
        total = np.zeros(len(self.n))
        np.add.at(total, self.group[:-1][mask], values[mask])
        return total

    def slope(self, mask: npt.NDArray[np.bool_]) -> FloatArray:
        """Per-curve least-squares slope of flux over time, of the points in ``mask``."""
        count = np.bincount(self.group[mask], minlength=len(self.n)).astype(np.float64)
        t_mean = self.sum(self.t, mask) / count
        y_mean = self.sum(self.flux, mask) / count
        dt = self.t - t_mean[self.group]
        denominator = self.sum(dt * dt, mask)
        numerator = self.sum(dt * (self.flux - y_mean[self.group]), mask)
        return np.where(denominator > 0, numerator / denominator, 0.0)

    # -- the features ------------------------------------------------------------

    def features(self) -> dict[str, FloatArray]:
        t, flux, err, n = self.t, self.flux, self.err, self.n
        group = self.group
        span = self.last(t) - self.first(t)
        peak_flux = np.maximum.reduceat(flux, self.starts)
        # The first point at the largest flux, as argmax takes.
        at_peak = flux == peak_flux[group]
        peak = np.minimum.reduceat(np.where(at_peak, self.pos, np.iinfo(np.int64).max), self.starts)
        peak_index = self.starts + peak
        t_peak = t[peak_index]
        noise = self.median(err)
        peak_scale = np.maximum(peak_flux, noise)
        mean = self.mean(flux)
        deviation = flux - mean[group]
        std = np.sqrt(self.mean(deviation * deviation))
        hi = self.percentile(flux, 95.0)
        lo = self.percentile(flux, 5.0)

        # Rise and decline: the last point before the peak below half its
        # flux, and the first one after it.
        half = 0.5 * peak_flux
        below = flux < half[group]
        before = np.maximum.reduceat(
            np.where(below & (self.pos < peak[group]), self.pos, -1), self.starts
        )
        after_pos = np.where(below & (self.pos > peak[group]), self.pos, np.iinfo(np.int64).max)
        after = np.minimum.reduceat(after_pos, self.starts)
        start = np.where(before >= 0, t[self.starts + np.maximum(before, 0)], self.first(t))
        end = np.where(after < n, t[self.starts + np.minimum(after, n - 1)], self.last(t))

        two = n >= 2
        weights = 1.0 / err**2
        weighted_mean = self.sum(flux * weights) / self.sum(weights)
        residual = (flux - weighted_mean[group]) / err
        pairs = self.pairs()
        delta = np.sqrt(n / (n - 1))[group] * residual
        product = delta[:-1] * delta[1:]
        j = self.pair_sum(np.sign(product) * np.sqrt(np.abs(product)), pairs) / (n - 1)
        chi2 = self.sum(residual * residual) / (n - 1)
        steps = np.diff(flux)
        variance = self.sum(deviation * deviation) / (n - 1)
        successive = self.pair_sum(steps * steps, pairs) / (n - 1)
        gaps = np.diff(t)
        apart = pairs & (gaps >= _MIN_GAP)
        rate = np.zeros(len(gaps))
        rate[apart] = np.abs(steps[apart]) / gaps[apart] / peak_scale[group[:-1][apart]]
        max_rate = np.full(len(n), -np.inf)
        np.maximum.at(max_rate, group[:-1][apart], rate[apart])
        any_apart = np.isfinite(max_rate)

        g_r = self.colour("g", "r", t_peak)
        g_r_late = self.colour("g", "r", t_peak + _COLOUR_DELAY)
        r_i = self.colour("r", "i", t_peak)
        return {
            "n_detections": n.astype(np.float64),
            "time_span": span,
            "log_peak_flux": np.log10(np.maximum(peak_flux, 1.0)),
            "log_median_flux": np.log10(np.maximum(self.median(flux), 1.0)),
            "rise_time": t_peak - start,
            "decline_time": end - t_peak,
            "peak_phase": np.where(span > 0, (t_peak - self.first(t)) / span, 0.0),
            "amplitude": 2.5 * np.log10(np.maximum(hi, noise) / np.maximum(lo, noise)),
            "std_over_mean": std / np.maximum(np.abs(mean), noise),
            "skew": np.where(std > 0, self.mean((deviation / std[group]) ** 3), 0.0),
            "beyond_1sigma": np.where(
                std > 0, self.mean((np.abs(deviation) > std[group]).astype(np.float64)), 0.0
            ),
            "stetson_j": np.where(two, np.sign(j) * np.log10(1.0 + np.abs(j)), 0.0),
            "log_reduced_chi2": np.where(two, np.log10(np.maximum(chi2, 1e-3)), 0.0),
            "von_neumann_ratio": np.where(two & (variance > 0), successive / variance, 0.0),
            "slope_before_peak": self.slope(self.pos <= peak[group]) / peak_scale,
            "slope_after_peak": self.slope(self.pos >= peak[group]) / peak_scale,
            "log_max_rate": np.where(
                any_apart, np.log10(np.maximum(max_rate, 1e-4)), float(np.log10(1e-4))
            ),
            "g_r_at_peak": np.nan_to_num(g_r, nan=0.0),
            "r_i_at_peak": np.nan_to_num(r_i, nan=0.0),
            "g_r_change": np.where(np.isnan(g_r) | np.isnan(g_r_late), 0.0, g_r_late - g_r),
            "log_median_snr": np.log10(np.maximum(self.median(flux / err), 0.01)),
        }

    def colour(self, blue: str, red: str, when: FloatArray) -> FloatArray:
        """Per-curve ``blue - red`` at ``when`` as :func:`_colour` computes it; nan for ``None``."""
        fluxes = []
        for name in (blue, red):
            chosen = self.band == name
            fluxes.append(np.maximum(self.interp(chosen, when), self.median(self.err, chosen)))
        colour = -2.5 * np.log10(fluxes[0] / fluxes[1])
        return np.clip(colour, -_COLOUR_LIMIT, _COLOUR_LIMIT)

    def interp(self, chosen: npt.NDArray[np.bool_], when: FloatArray) -> FloatArray:
        """Per curve, :func:`numpy.interp` of ``when`` in the chosen points' flux over time."""
        group = self.group[chosen]
        t, flux = self.t[chosen], self.flux[chosen]
        counts = np.bincount(group, minlength=len(self.n))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        # Times are sorted within a curve, so the points at or before
        # ``when`` are a prefix of each curve's chosen points.
        at_or_before = np.bincount(group, weights=t <= when[group], minlength=len(self.n))
        before = at_or_before.astype(np.int64)
        result = np.full(len(self.n), np.nan)
        some = counts > 0
        last = starts + counts - 1
        left = some & (before == 0)
        right = some & (before == counts)
        result[left] = flux[starts[left]]
        result[right] = flux[last[right]]
        inside = some & ~left & ~right
        j = starts[inside] + before[inside] - 1
        x = when[inside]
        x0, x1, y0, y1 = t[j], t[j + 1], flux[j], flux[j + 1]
        slope = (y1 - y0) / (x1 - x0)
        value = slope * (x - x0) + y0
        # As numpy: from the other end if that gave nan, and exact on a point.
        value = np.where(np.isnan(value), slope * (x - x1) + y1, value)
        value = np.where(np.isnan(value) & (y0 == y1), y0, value)
        value = np.where(x0 == x, y0, value)
        result[inside] = value
        return result
