"""Statistics over seeds for the ablation reports: mean, sample standard deviation and a 95% t-interval.

Why a t-interval and not mean ± 2 sd: an ablation trains each cell with a handful of seeds (2 to 5), and with n
values the mean's uncertainty is ``sd/√n`` times Student's t quantile with n − 1 degrees of freedom, which is far
above the normal 1.96 for small n (4.30 for 3 seeds). Why paired differences: every seed fixes the student's
initialisation and data order, so a cell and the CE-only baseline trained with the same seed share most of
their noise; the interval of the per-seed differences is the honest answer to "does this cell beat CE-only"
(it is usually much narrower than either cell's own interval).

No scipy: the quantiles t_{0.975, df} for df 1..30 are tabulated (checked against a numerical integration of the
t density in tests/test_ablate_seeds.py); beyond 30 the Cornish-Fisher expansion around the normal quantile
(Abramowitz & Stegun 26.7.5) is accurate to better than 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# t_{0.975, df}: the two-sided 95% quantile of Student's t with df degrees of freedom, df = 1..30
T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
        2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
        2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
        2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
Z975 = 1.959963984540054  # the normal 0.975 quantile


def t975(df: int) -> float:
    """Student's t quantile t_{0.975, df} (the multiplier of a two-sided 95% interval)."""
    if df < 1:
        raise ValueError(f"t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z, v = Z975, float(df)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def summarize(values: Iterable[float]) -> dict:
    """``n``, ``mean``, sample ``sd`` (ddof = 1), ``half`` (the 95% half-width t_{0.975,n-1}·sd/√n) and the
    interval ``lo``/``hi``. With fewer than two values there is no spread to measure: sd, half, lo and hi are
    None (a single run gets no interval rather than a made-up one); with none, mean is None too."""
    xs = [float(x) for x in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half": None, "lo": None, "hi": None}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "half": None, "lo": None, "hi": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def paired_differences(values: dict, baseline: dict) -> dict:
    """Per seed ``values[s] − baseline[s]`` over the seeds both have (in ``values``' order)."""
    return {s: values[s] - baseline[s] for s in values if s in baseline}


__all__ = ["T975", "Z975", "paired_differences", "summarize", "t975"]
