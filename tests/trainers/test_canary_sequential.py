"""The canary's test is sequential: checked at every tick, its chance of any false decision over a whole canary stays
at alpha, where the fixed-horizon z-test it replaced, checked the same way, decides falsely far more often. By
simulation (seeded, numpy draws the feedback; the decisions are canary.sequential_difference's own)."""

import math

import numpy as np
import pytest

from trainers import canary

ALPHA = 0.05
MIN_SAMPLES = 50
TICK = 10  # feedback events between two looks (the scheduled tick sees a batch at a time)


def simulate(
    p_canary: float, p_production: float, share: float, sims: int, horizon: int, seed: int, test: str
) -> list[tuple[str, int] | None]:
    """For each simulated canary, the first decision (verdict, feedback events seen) when checked every TICK events
    up to `horizon`, or None."""
    rng = np.random.default_rng(seed)
    to_canary = rng.random((sims, horizon)) < share
    accepted = rng.random((sims, horizon)) < np.where(to_canary, p_canary, p_production)
    n_a, k_a = np.cumsum(to_canary, axis=1), np.cumsum(to_canary & accepted, axis=1)
    n_b, k_b = np.cumsum(~to_canary, axis=1), np.cumsum(~to_canary & accepted, axis=1)
    out: list[tuple[str, int] | None] = []
    for s in range(sims):
        decision = None
        for t in range(TICK - 1, horizon, TICK):
            na, nb = int(n_a[s, t]), int(n_b[s, t])
            if min(na, nb) < MIN_SAMPLES:
                continue
            ka, kb = int(k_a[s, t]), int(k_b[s, t])
            if test == "sequential":
                p = canary.sequential_difference(ka, na, kb, nb, ALPHA, 0.1)["p_value"]
            else:
                p = canary.two_proportions(ka, na, kb, nb)["p_value"]
            if p is not None and p < ALPHA:
                decision = ("better" if ka / na > kb / nb else "worse", t + 1)
                break
        out.append(decision)
    return out


def test_a_a_canaries_checked_at_every_tick_decide_falsely_at_most_alpha() -> None:
    sims, horizon = 1000, 2000
    tolerance = 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)  # three Monte-Carlo standard errors
    sequential = simulate(0.3, 0.3, 0.5, sims, horizon, seed=1, test="sequential")
    fixed = simulate(0.3, 0.3, 0.5, sims, horizon, seed=1, test="z")
    false_sequential = sum(d is not None for d in sequential) / sims
    false_fixed = sum(d is not None for d in fixed) / sims
    print(
        f"A/A, {sims} canaries, {horizon} feedback events each, a look every {TICK}: false decisions"
        f" {false_sequential:.3f} sequential, {false_fixed:.3f} with the repeated z-test (alpha {ALPHA})"
    )
    assert false_sequential <= ALPHA + tolerance
    assert false_fixed > ALPHA + tolerance  # why the z-test was replaced


@pytest.mark.parametrize("share", [0.5, 0.1])
def test_a_ten_point_difference_is_decided(share: float) -> None:
    sims, horizon = 200, 6000
    decisions = simulate(0.4, 0.3, share, sims, horizon, seed=2, test="sequential")
    decided = [d for d in decisions if d is not None]
    samples = sorted(t for _, t in decided)
    median = samples[len(samples) // 2]
    print(
        f"canary 0.40 against production 0.30, canary share {share}: {len(decided)}/{sims} decided within {horizon}"
        f" feedback events, all 'better': {all(v == 'better' for v, _ in decided)}; feedback events to decide: median"
        f" {median}, 90th percentile {samples[int(0.9 * (len(samples) - 1))]}"
    )
    assert all(verdict == "better" for verdict, _ in decided)
    assert len(decided) >= 0.9 * sims


def test_adaptive_share_grows_with_evidence_between_floor_and_ceiling() -> None:
    none = canary.sequential_difference(30, 100, 30, 100)
    ahead = canary.sequential_difference(45, 100, 30, 100)
    decided = canary.sequential_difference(70, 100, 30, 100)
    behind = canary.sequential_difference(10, 100, 30, 100)
    assert canary.adaptive_share(0.1, 0.5, none, ALPHA) == 0.1
    assert canary.adaptive_share(0.1, 0.5, behind, ALPHA) == 0.1
    assert 0.1 < canary.adaptive_share(0.1, 0.5, ahead, ALPHA) < 0.5
    assert canary.adaptive_share(0.1, 0.5, decided, ALPHA) == 0.5


def test_the_confidence_sequence_agrees_with_the_p_value() -> None:
    for k1, k2 in ((30, 30), (45, 30), (60, 30), (10, 30)):
        t = canary.sequential_difference(k1, 100, k2, 100, ALPHA)
        assert t["low"] <= t["difference"] <= t["high"]
        assert (t["p_value"] < ALPHA) == (t["low"] > 0 or t["high"] < 0), t
    assert canary.sequential_difference(0, 60, 0, 60)["p_value"] == 1.0  # both at 0: a variance still
    assert canary.sequential_difference(1, 0, 1, 5)["p_value"] is None
