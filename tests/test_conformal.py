"""Split-conformal decisions hold their false-alarm rate (docs/method.md §7), checked by simulation on both
sides of the exact binomial law, so an off-by-one in the p-value fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom

from zsad.detection import conformal
from zsad.detection.split import split_normal
from zsad.errors import ConfigError

TRIALS = 10_000


def flag_counts(n: int, alpha: float, rule, seed: int = 0) -> int:
    """Flags among TRIALS trials, each with a fresh calibration set of n normal scores and one normal test score."""
    rng = np.random.default_rng(seed)
    cal, test = rng.normal(size=(TRIALS, n)), rng.normal(size=TRIALS)
    return int(sum(rule(cal[i], test[i : i + 1], alpha)[0] for i in range(TRIALS)))


def ours(cal, s, alpha):
    return conformal.is_anomaly(cal, s, alpha)


def via_p_values(cal, s, alpha):
    return conformal.p_values(cal, s) <= alpha + 1e-12


def off_by_one(cal, s, alpha):  # #{cal ≥ s} / n: the p-value without the test point itself
    return np.array([(cal >= s[0]).sum() / len(cal) <= alpha])


@pytest.mark.parametrize("n,alpha", [(19, 0.05), (50, 0.1), (99, 0.05), (20, 0.2)])
def test_false_alarm_rate_holds_on_both_sides(n, alpha):
    k = conformal.flag_rank(alpha, n)
    expected = k / (n + 1)  # exact for continuous scores
    assert expected <= alpha
    lo, hi = binom.interval(0.9999, TRIALS, expected)
    for rule in (ours, via_p_values):
        count = flag_counts(n, alpha, rule)
        assert lo <= count <= hi, f"{rule.__name__}: {count} flags of {TRIALS}, expected {lo:.0f}–{hi:.0f} (rate {expected:.4f})"


def test_an_off_by_one_p_value_is_caught():
    n, alpha = 50, 0.1  # (at n = 19, α = 0.05 the two rules happen to agree: both flag with probability 1/20)
    lo, hi = binom.interval(0.9999, TRIALS, conformal.flag_rank(alpha, n) / (n + 1))
    count = flag_counts(n, alpha, off_by_one)
    assert not lo <= count <= hi, f"the check cannot see an off-by-one: {count} in {lo}–{hi}"


def test_p_values_exact_at_any_scale_with_ties():
    cal = np.array([1e12, 1e12 + 1, 5.0, 5.0, -3.0])
    p = conformal.p_values(cal, np.array([5.0, 1e12 + 2, -1e9]))
    assert p.tolist() == [(1 + 4) / 6, 1 / 6, 6 / 6]  # ties count as ≥
    assert conformal.threshold(cal, 0.5) == 5.0 and conformal.flag_rank(0.5, 5) == 3
    assert conformal.is_anomaly(cal, np.array([5.0, 5.0 + 1e-9]), 0.5).tolist() == [False, True]


def test_rates_and_sizes():
    assert conformal.min_calibration(0.05) == 19 and conformal.min_calibration(0.01) == 99 and conformal.min_calibration(0.2) == 4
    assert conformal.calibration_size(1000, 0.05) == 200 and conformal.calibration_size(40, 0.05) == 19
    assert conformal.flag_rank(0.29, 99) == 29, "⌊α(n+1)⌋ without float rounding trouble"
    for bad in (0, 1, -0.1, 1.5, "x", None):
        with pytest.raises(ConfigError, match="false-alarm rate"):
            conformal.check_rate(bad)
    spread = conformal.rate_spread(0.05, 19)
    assert spread.k == 1 and math.isclose(spread.mean, 1 / 20) and math.isclose(spread.q95, beta(1, 19).ppf(0.95))
    assert conformal.threshold(np.arange(5.0), 0.1) == math.inf, "k = 0: nothing can be flagged"


def test_split_by_hashed_name_is_stable_and_checked():
    names = [f"img_{i:03d}.png" for i in range(100)]
    s = split_normal(names, 0.05)
    assert len(s.calibration) == 20 and len(s.fit) == 80 and not set(s.calibration) & set(s.fit)
    shots = split_normal(names, 0.05, shots=8)
    assert shots.calibration == s.calibration and len(shots.fit) == 8 and set(shots.fit) <= set(s.fit)
    with pytest.raises(ConfigError, match=r"a false-alarm rate of 0\.01 needs 99 calibration images.*Add normal images"):
        split_normal(names, 0.01)
    with pytest.raises(ConfigError, match="--shots 90"):
        split_normal(names, 0.05, shots=90)
    assert len(split_normal(names[:20], 0.05, tiles_per_image=10).fit) == 1, "one fit image is enough when it has 10+ tiles"


def _parts(names: list[str], alpha: float) -> tuple[set, set]:
    s = split_normal(names, alpha)
    return {names[i] for i in s.calibration}, {names[i] for i in s.fit}


@pytest.mark.parametrize("n,m", [(96, 4), (100, 1), (60, 30), (30, 5), (200, 37)])
def test_what_the_split_promises_when_a_folder_grows_or_shrinks(n, m):
    """Adding m images moves ≤ m old calibration images to fit and ≤ n_cal' − n_cal old fit images to calibration
    (read backwards, the promise for removing m images). Many random folders."""
    rng = np.random.default_rng(n * 1000 + m)
    moved_any, same_size = False, False
    for trial in range(40):
        old = [f"{trial}_{rng.integers(1e12)}.png" for _ in range(n)]
        new = old + [f"{trial}_new_{rng.integers(1e12)}.png" for _ in range(m)]
        cal, fit = _parts(old, 0.05)
        cal2, fit2 = _parts(new, 0.05)
        to_fit, to_cal = len(cal & fit2), len(fit & cal2)
        assert to_fit <= m and to_cal <= len(cal2) - len(cal), (to_fit, to_cal)
        assert len(cal2) >= len(cal)
        if len(cal2) == len(cal):
            same_size = True
            moved_any |= to_fit > 0
    if same_size:
        assert moved_any, "the old promise (nothing moves unless n_cal grows) is false: some trial with n_cal unchanged moves an image"


def test_the_calibration_object_is_the_formulas_at_its_rate_or_any_other():
    """zsad.detection.calibration.Calibration (what a detector folder and anomalib's post-processor hold) answers with
    conformal.py's and maps.py's formulas: p-values, decisions, the k-th largest score and map maximum, the colour scale;
    α defaults to the fitted rate, another α is one argument, and a mismatched map array is refused."""
    from zsad.detection.calibration import Calibration
    from zsad.detection.maps import colour_scale

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=40), 1)
    maxima = scores + np.abs(rng.normal(size=40))
    c = Calibration(0.1, scores, maxima, -0.5, np.linspace(-1, 3, 5))
    new = np.round(rng.normal(size=300), 1)
    assert np.array_equal(c.p_values(new), conformal.p_values(scores, new))
    for alpha in (None, 0.05, 0.3):
        a = 0.1 if alpha is None else alpha
        assert np.array_equal(c.decide(new, alpha), conformal.is_anomaly(scores, new, a))
        assert c.image_threshold(alpha) == np.sort(scores)[-conformal.flag_rank(a, 40)]
        assert c.map_threshold(alpha) == np.sort(maxima)[-conformal.flag_rank(a, 40)]
        assert c.colour_scale(alpha) == colour_scale(-0.5, c.map_threshold(alpha), float(maxima.max()))
    assert c.n == 40 and c.has_maps and c.map_top == maxima.max()
    with pytest.raises(ValueError, match="40 calibration scores but 39 map maxima"):
        Calibration(0.1, scores, maxima[:-1], -0.5)
    with pytest.raises(ConfigError, match=r"needs at least 99 normal calibration images.*has 40.*Refit"):
        c.decide(new, 0.01, remedy="Refit with more images, or α ≥ {smallest:g}.")
    with pytest.raises(ConfigError, match="holds no scores, so nothing can be decided"):
        Calibration(0.1, np.zeros(0)).decide(new)
    no_maps = Calibration(0.1, scores)
    assert not no_maps.has_maps
    with pytest.raises(ConfigError, match="holds no anomaly maps"):
        no_maps.map_threshold()
