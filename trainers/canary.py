"""Live metrics per served version, from the feedback its own generations received, and the canary policy.

The gateway stamps every generation with the adapter version that produced it (`Generation.model`: `v3`, or `base`
for the base model alone). What the editor did with it is the generation's `outcome` (feedback.join): `edited` when
any `edited` event arrived (whatever the decision), else the latest decision, `accepted` or `rejected`; `shown` and
`pending` have no feedback yet. From those outcomes, per version:

- **served**: its generations (with a `generation` event), in the window when `since` is given (by `shown_at`);
- **with feedback**: those whose outcome is accepted, rejected or edited. It is the denominator of both rates;
  generations still waiting for feedback are counted as served but are no evidence either way;
- **acceptance rate**: share of generations with feedback that were accepted *and never edited* (kept as served,
  or the accepted part of it), with a Wilson score 95% interval;
- **edit rate**: share of generations with feedback that were edited (lower is better: an edit is work the user
  did), with a Wilson score 95% interval;
- **edit distance**: mean normalized Levenshtein distance between an edited generation and the user's final text
  (0 identical, 1 nothing in common; lower is better), over edited generations that have one (a generation in an
  excluded path keeps no text, hence no distance), with a percentile bootstrap 95% interval (metrics.mean_ci;
  a normal interval above `BOOTSTRAP_MAX` values, where the two agree and the bootstrap would only cost time).

`compare` tests two versions' difference: acceptance and edit rates by a sequential test (`sequential_difference`,
below) that stays valid however often it is looked at, edit distances by a Mann-Whitney U test (exact permutation
distribution for small samples, normal approximation with tie correction otherwise; a fixed-horizon test, shown for
reading, never acted on). Pure Python; each result names its method.

The canary policy (`apply_canary_policy`) decides on one pre-declared metric, the acceptance rate: significantly
better promotes the canary to production (through the registry's promotion gate) and ends the canary; significantly
worse takes the canary alias away, so production serves everyone. The test compares both aliases over the same window
(since the canary alias last moved), so a change in traffic over time affects both sides alike. The scheduled tick
tests again as feedback accrues; because the test is sequential (an always-valid confidence sequence), checking at
every tick keeps the chance of any false decision over the whole canary at `alpha` (tests/trainers/
test_canary_sequential.py shows it by simulation). `canary_min_samples` only keeps the first few from deciding."""

import itertools
import math
import time
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from core.projects import Project
from feedback.fold import settle
from feedback.models import Generation
from trainers import registry
from trainers.config import model_settings
from trainers.metrics import mean_ci
from trainers.models import AdapterAlias

BASE = "base"
CONFIDENCE = 0.95
BOOTSTRAP_MAX = 200  # above this many edit distances, a normal interval: it agrees, and 2000 resamples of
# thousands of values took seconds per version (the console's canary page, GET /v1/adapters/compare)
EXACT_MAX_ARRANGEMENTS = 20_000  # Mann-Whitney: enumerate the exact distribution up to this many arrangements
FEEDBACK = ("accepted", "rejected", "edited")
NORMAL = NormalDist()


# --- statistics ----------------------------------------------------------------------------------------------------


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{rate, low, high, successes, n}: the Wilson score interval, which stays inside [0, 1] and keeps its coverage
    for small n and rates near 0 or 1 (unlike the normal "p ± z·se"). n = 0: rate and interval None."""
    if n == 0:
        return {"rate": None, "low": None, "high": None, "successes": 0, "n": 0}
    z = NORMAL.inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where rounding leaves 1e-17
    high = 1.0 if successes == n else min(1.0, centre + half)
    return {"rate": p, "low": low, "high": high, "successes": successes, "n": n}


def _normal_p(z: float) -> float:
    return 2 * (1 - NORMAL.cdf(abs(z)))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test on [[k1, n1-k1], [k2, n2-k2]]: the probability, given the margins,
    of a table no more likely than the observed one (the convention of R's fisher.test and scipy)."""
    successes, total = k1 + k2, n1 + n2
    low, high = max(0, successes - n2), min(successes, n1)

    def log_p(x: int) -> float:
        return _log_choose(n1, x) + _log_choose(n2, successes - x) - _log_choose(total, successes)

    observed = log_p(k1)
    p = math.fsum(math.exp(log_p(x)) for x in range(low, high + 1) if log_p(x) <= observed + 1e-7)
    return min(1.0, p)


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """Is k1/n1 different from k2/n2, at one look? (Repeated as data accrue, its false-decision rate grows with
    the looks: the canary policy uses `sequential_difference`.) The pooled two-proportion z-test when every expected
    cell count is at least 5,
    Fisher's exact test otherwise. {method, statistic, p_value}; statistic: z, or the sample odds ratio (None when
    a cell is 0) for Fisher. p_value None when a side is empty."""
    if n1 == 0 or n2 == 0:
        return {"method": "two-proportion test (a side has no data)", "statistic": None, "p_value": None}
    pooled = (k1 + k2) / (n1 + n2)
    expected = (n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled))
    if min(expected) >= 5:
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = (k1 / n1 - k2 / n2) / se
        return {"method": "two-proportion z-test (pooled, two-sided)", "statistic": z, "p_value": _normal_p(z)}
    a, b, c, d = k1, n1 - k1, k2, n2 - k2
    odds = (a * d) / (b * c) if b * c else None
    return {
        "method": "Fisher's exact test (two-sided; an expected cell count is below 5)",
        "statistic": odds,
        "p_value": fisher_exact(k1, n1, k2, n2),
    }


def sequential_difference(
    k1: int, n1: int, k2: int, n2: int, alpha: float = 0.05, effect_size: float = 0.1
) -> dict[str, Any]:
    """Is k1/n1 different from k2/n2, in a test that may be repeated after every new observation? The mixture
    sequential probability ratio test (mSPRT) of Johari, Pekelis & Walsh, "Always valid inference: continuous
    monitoring of A/B tests", Operations Research 70(3), 2022 (Johari, Koomen, Pekelis & Walsh, KDD 2017), for the
    difference of two rates with the normal approximation: the likelihood ratio of "difference d" against
    "difference 0", mixed over d ~ N(0, effect_size^2) (Robbins' normal mixture), is
    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * diff^2 / (2 V (V + tau^2))), V the variance of the observed
    difference. Under no difference Lambda is a nonnegative martingale, so by Ville's inequality the chance that it
    ever reaches 1/alpha is at most alpha (Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric,
    nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021, give the same boundary as a confidence
    sequence). Inverting it gives `low`..`high`, an interval on the difference that covers it at every moment at
    once; `p_value` = min(1, 1/Lambda) is always valid. V uses each side's rate shrunk toward 1/2 ((k+1)/(n+2)), so
    that a side with all or none accepted still has a variance.

    {method, statistic (log Lambda), p_value, difference, low, high}; p_value None when a side is empty."""
    method = f"mixture sequential probability ratio test (always valid; normal mixture, tau={effect_size:g})"
    if n1 == 0 or n2 == 0:
        return {"method": method, "statistic": None, "p_value": None, "difference": None, "low": None, "high": None}
    s1, s2 = (k1 + 1) / (n1 + 2), (k2 + 1) / (n2 + 2)
    v = s1 * (1 - s1) / n1 + s2 * (1 - s2) / n2
    tau2 = effect_size * effect_size
    difference = k1 / n1 - k2 / n2
    log_lr = 0.5 * math.log(v / (v + tau2)) + tau2 * difference * difference / (2 * v * (v + tau2))
    half = math.sqrt(v * (v + tau2) / tau2 * math.log((v + tau2) / (v * alpha * alpha)))
    return {
        "method": method,
        "statistic": log_lr,
        "p_value": min(1.0, math.exp(-log_lr)) if log_lr > 0 else 1.0,
        "difference": difference,
        "low": difference - half,
        "high": difference + half,
    }


def _mid_ranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Ranks 1..n (ties share their mean rank) in the order of `values`, and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def mann_whitney(a: list[float], b: list[float]) -> dict[str, Any]:
    """Two-sided Mann-Whitney U test (does a tend to be larger or smaller than b?). {method, statistic (U of a),
    p_value}. Exact (every arrangement of the pooled mid-ranks) when there are at most EXACT_MAX_ARRANGEMENTS of them,
    else the normal approximation with tie and continuity corrections. p_value None when a side is empty."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return {"method": "Mann-Whitney U test (a side has no data)", "statistic": None, "p_value": None}
    ranks, ties = _mid_ranks([*a, *b])
    offset = n1 * (n1 + 1) / 2
    u = math.fsum(ranks[:n1]) - offset
    mean_u = n1 * n2 / 2
    if math.comb(n1 + n2, n1) <= EXACT_MAX_ARRANGEMENTS:
        observed = abs(u - mean_u) - 1e-9
        total = hits = 0
        for chosen in itertools.combinations(ranks, n1):
            total += 1
            hits += abs(math.fsum(chosen) - offset - mean_u) >= observed
        return {
            "method": f"Mann-Whitney U test (two-sided, exact over {total} arrangements)",
            "statistic": u,
            "p_value": hits / total,
        }
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - math.fsum(t**3 - t for t in ties) / (n * (n - 1)))
    if variance <= 0:  # every value tied: no evidence of a difference
        p_value = 1.0
    else:
        z = max(0.0, abs(u - mean_u) - 0.5) / math.sqrt(variance)
        p_value = _normal_p(z)
    return {
        "method": "Mann-Whitney U test (two-sided, normal approximation with tie and continuity corrections)",
        "statistic": u,
        "p_value": p_value,
    }


def _mean_interval(values: list[float]) -> dict[str, Any]:
    if len(values) <= BOOTSTRAP_MAX:
        return {**mean_ci(values, CONFIDENCE), "method": "percentile bootstrap, 2000 resamples"}
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = NORMAL.inv_cdf(1 - (1 - CONFIDENCE) / 2) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "method": "normal (mean ± z·sd/√n)"}


# --- metrics from the database -------------------------------------------------------------------------------------


def served_model_name(session: Session, project_id: int, ref: str) -> str:
    """The model name that generations carry for `ref`: a version name, an alias (production, canary) or `base`.
    NotFound names the ref."""
    if ref in (BASE, registry.UPSTREAM):
        return ref
    return registry.get_version(session, project_id, ref).name


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def version_metrics(
    session: Session, project_id: int, ref: str, since: datetime | None = None, fold: bool = True
) -> dict[str, Any]:
    """Live metrics of one version (see the module docstring for what each counts), over its generations shown at or
    after `since` (a naive time is UTC). Events still queued for the fold are folded first (the caller commits that),
    unless `fold` is False."""
    return versions_metrics(session, project_id, [ref], since, fold)[ref]


def versions_metrics(
    session: Session, project_id: int, refs: list[str], since: datetime | None = None, fold: bool = True
) -> dict[str, dict[str, Any]]:
    """`version_metrics` of several refs in one pass over the window (three queries, grouped by model, however many
    refs: a console table of a dozen targets read the window a dozen times over)."""
    if fold:
        settle(session, project_id)
    models = {ref: served_model_name(session, project_id, ref) for ref in refs}
    since = _utc(since)
    scope = [Generation.project_id == project_id, Generation.model.in_(sorted(set(models.values())))]
    if since is not None:
        scope.append(Generation.shown_at >= since)

    def count(*outcomes: str) -> Any:
        return func.coalesce(func.sum(case((Generation.outcome.in_(outcomes), 1), else_=0)), 0)

    counts: dict[str, tuple[int, ...]] = {}
    for model, *row in session.execute(
        select(
            Generation.model,
            func.count(Generation.id),
            count(*FEEDBACK),
            count("accepted"),
            count("edited"),
            count("rejected"),
        )
        .where(*scope)
        .group_by(Generation.model)
    ):
        counts[model] = tuple(int(x) for x in row)
    distances: dict[str, list[float]] = {}
    edited_rows = select(Generation.model, Generation.edit_distance).where(*scope, Generation.outcome == "edited")
    for model, d in session.execute(edited_rows):
        if d is not None and model is not None:
            distances.setdefault(model, []).append(float(d))
    if session.get_bind().dialect.name == "postgresql":
        spend = _pg_latency_and_cost(session, scope)
    else:
        spend = _latency_and_cost(session, scope)
    out: dict[str, dict[str, Any]] = {}
    for ref, model in models.items():
        served, with_feedback, accepted, edited, rejected = counts.get(model, (0, 0, 0, 0, 0))
        latencies, priced, total = spend.get(model, ({"n": 0, "p50": None, "p95": None}, 0, 0.0))
        out[ref] = {
            "ref": ref,
            "model": model,
            "since": since,
            "served": served,
            "with_feedback": with_feedback,
            "accepted": accepted,
            "edited": edited,
            "rejected": rejected,
            "acceptance_rate": wilson(accepted, with_feedback),
            "edit_rate": wilson(edited, with_feedback),
            "edit_distance": _mean_interval(distances.get(model, [])),
            "latency_ms": latencies,
            "cost": _cost(priced, total, served, accepted),
            "distances": distances.get(model, []),
        }
    return out


Spend = dict[str, tuple[dict[str, Any], int, float]]  # model -> (latency percentiles, priced generations, cost)


def _latency_and_cost(session: Session, scope: list[Any]) -> Spend:
    """Latency percentiles (nearest rank) and cost per model, from every generation's row (SQLite: the embedded
    default's volumes)."""
    latencies: dict[str, list[float]] = {}
    costs: dict[str, list[float]] = {}
    for model, latency, meta in session.execute(
        select(Generation.model, Generation.latency_ms, Generation.meta).where(*scope)
    ):
        if latency is not None:
            latencies.setdefault(model, []).append(float(latency))
        cost = ((meta or {}).get("gateway") or {}).get("cost")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            costs.setdefault(model, []).append(float(cost))
    out: Spend = {}
    for model in set(latencies) | set(costs):
        ordered = sorted(latencies.get(model, []))
        priced = costs.get(model, [])
        percentiles = {"n": len(ordered), "p50": _rank(ordered, 0.50), "p95": _rank(ordered, 0.95)}
        out[model] = (percentiles, len(priced), math.fsum(priced))
    return out


def _rank(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile, as Postgres' percentile_disc."""
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else None


def _pg_latency_and_cost(session: Session, scope: list[Any]) -> Spend:
    """The same, aggregated by Postgres: a week of a busy target is too many rows to read for a page."""
    cost_json = Generation.meta["gateway"]["cost"]
    cost = case((func.jsonb_typeof(cost_json) == "number", cost_json.as_float()), else_=None)
    out: Spend = {}
    for model, n, p50, p95, priced, total in session.execute(
        select(
            Generation.model,
            func.count(Generation.latency_ms),
            func.percentile_disc(0.50).within_group(Generation.latency_ms),
            func.percentile_disc(0.95).within_group(Generation.latency_ms),
            func.count(cost),
            func.sum(cost),
        )
        .where(*scope)
        .group_by(Generation.model)
    ):
        out[model] = ({"n": int(n), "p50": _float(p50), "p95": _float(p95)}, int(priced), float(total or 0.0))
    return out


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _cost(priced: int, total: float, served: int, accepted: int) -> dict[str, Any]:
    """Cost per 1,000 generations (over those with a known cost) and per accepted generation (all the target's
    spend over what was kept: the price of one generation a user accepted). None where no price is set."""
    if not priced:
        return {"priced": 0, "total": None, "per_1k_generations": None, "per_accepted": None}
    # generations without a recorded cost (served before a price was set) are counted at the priced mean
    spend = total / priced * max(served, priced)
    return {
        "priced": priced,
        "total": total,
        "per_1k_generations": total / priced * 1000,
        "per_accepted": spend / accepted if accepted else None,
    }


def without_distances(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the raw list of distances (which `compare` needs, a reader does not)."""
    return {k: v for k, v in metrics.items() if k != "distances"}


def _verdict(p_value: float | None, difference: float | None, higher_is_better: bool, alpha: float) -> str:
    if p_value is None or difference is None:
        return "not enough data"
    if p_value >= alpha or difference == 0:
        return "no significant difference"
    return "better" if (difference > 0) == higher_is_better else "worse"


def compare(
    session: Session,
    project_id: int,
    a: str,
    b: str,
    *,
    since: datetime | None = None,
    alpha: float | None = None,
    min_samples: int | None = None,
) -> dict[str, Any]:
    """Is `a` better or worse than `b` on live feedback? Differences are a - b. Each test says its method, statistic
    and p-value, and a verdict about `a`: better, worse, no significant difference (p >= alpha), or not enough data
    (a side has fewer than `min_samples` observations of what the test compares: generations with feedback for the
    rates, edited generations with a distance for the edit distance). `alpha` and `min_samples` default to the
    project's canary settings. The overall `verdict` is the acceptance rate's, the metric the canary policy uses."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    settings = model_settings(project.settings)
    alpha = settings.canary_alpha if alpha is None else alpha
    min_samples = settings.canary_min_samples if min_samples is None else min_samples
    ma, mb = version_metrics(session, project_id, a, since), version_metrics(session, project_id, b, since)
    tests: dict[str, dict[str, Any]] = {}
    for metric, field in (("acceptance_rate", "accepted"), ("edit_rate", "edited")):
        higher_is_better = metric == "acceptance_rate"
        ra, rb = ma[metric], mb[metric]
        enough = min(ma["with_feedback"], mb["with_feedback"]) >= min_samples
        test = sequential_difference(
            ma[field], ma["with_feedback"], mb[field], mb["with_feedback"], alpha, settings.canary_effect_size
        )
        tests[metric] = {
            "metric": metric,
            "a": ra["rate"],
            "b": rb["rate"],
            "higher_is_better": higher_is_better,
            "n": [ma["with_feedback"], mb["with_feedback"]],
            **test,
            "verdict": _verdict(test["p_value"] if enough else None, test["difference"], higher_is_better, alpha),
        }
    da, db = ma["distances"], mb["distances"]
    test = mann_whitney(da, db)
    difference = ma["edit_distance"]["mean"] - mb["edit_distance"]["mean"] if da and db else None
    enough = min(len(da), len(db)) >= min_samples
    shift = test["statistic"] - len(da) * len(db) / 2 if test["statistic"] is not None else None
    tests["edit_distance"] = {
        "metric": "edit_distance",
        "a": ma["edit_distance"]["mean"],
        "b": mb["edit_distance"]["mean"],
        "difference": difference,
        "higher_is_better": False,
        "n": [len(da), len(db)],
        **test,
        # Mann-Whitney tests which side tends to be larger: its direction is U's, not the means'.
        "verdict": _verdict(test["p_value"] if enough else None, shift, False, alpha),
    }
    return {
        "a": without_distances(ma),
        "b": without_distances(mb),
        "since": _utc(since),
        "alpha": alpha,
        "min_samples": min_samples,
        "tests": tests,
        "verdict": tests["acceptance_rate"]["verdict"],
    }


# --- the canary's share of traffic ---------------------------------------------------------------------------------

SHARE_TTL_S = 60.0  # a gateway process recomputes an adaptive share at most this often per canary
_shares: dict[tuple[int, str], tuple[float, float]] = {}  # (project, canary) -> (monotonic time, share)


def adaptive_share(floor: float, ceiling: float, test: dict[str, Any], alpha: float) -> float:
    """The canary's share given the sequential test of its acceptance rate against production: the floor while
    the canary is not ahead, rising linearly with the test's log likelihood ratio to the ceiling at the decision
    threshold (log 1/alpha). The allocation depends only on past feedback, which the test allows."""
    ceiling = max(ceiling, floor)
    if test.get("statistic") is None or not test.get("difference") or test["difference"] <= 0:
        return floor
    progress = min(1.0, max(0.0, test["statistic"] / math.log(1 / alpha)))
    return floor + (ceiling - floor) * progress


def canary_share(session: Session, project_id: int, canary: str, settings: Any) -> float:
    """The share of `production` requests the canary serves: `model.canary_share`, or with
    `model.canary_adaptive_share`, `adaptive_share` between canary_share and canary_share_max on the feedback since
    the canary alias moved (read as folded, cached SHARE_TTL_S per process: a share need not be exact)."""
    if not settings.canary_adaptive_share:
        return float(settings.canary_share)
    key, now = (project_id, canary), time.monotonic()
    cached = _shares.get(key)
    if cached is not None and now - cached[0] < SHARE_TTL_S:
        return cached[1]
    production = registry.alias_version(session, project_id, "production")
    alias_row = session.get(AdapterAlias, (project_id, "canary"))
    since = alias_row.updated_at if alias_row is not None else None
    ma = version_metrics(session, project_id, canary, since, fold=False)
    mb = version_metrics(session, project_id, production.name if production else BASE, since, fold=False)
    test = sequential_difference(
        ma["accepted"],
        ma["with_feedback"],
        mb["accepted"],
        mb["with_feedback"],
        settings.canary_alpha,
        settings.canary_effect_size,
    )
    enough = min(ma["with_feedback"], mb["with_feedback"]) >= settings.canary_min_samples
    floor = float(settings.canary_share)
    share = adaptive_share(floor, settings.canary_share_max, test, settings.canary_alpha) if enough else floor
    _shares[key] = (now, share)
    return share


# --- the canary policy ---------------------------------------------------------------------------------------------


def _summary(comparison: dict[str, Any]) -> str:
    t = comparison["tests"]["acceptance_rate"]
    statistic = "-" if t["statistic"] is None else f"{t['statistic']:.4g}"
    return (
        f"acceptance rate {t['a']:.3f} (n={t['n'][0]}) vs {t['b']:.3f} (n={t['n'][1]}), difference"
        f" {t['difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]: {t['method']}, log likelihood ratio"
        f" {statistic}, always-valid p={t['p_value']:.4g}, alpha={comparison['alpha']}"
    )


def _evidence(comparison: dict[str, Any]) -> dict[str, Any]:
    """What the alias history keeps of a decision: the tests, their inputs and the window (JSON-ready)."""
    since = comparison["since"]
    return {
        "since": since.isoformat() if since is not None else None,
        "alpha": comparison["alpha"],
        "min_samples": comparison["min_samples"],
        "canary": comparison["a"]["model"],
        "baseline": comparison["b"]["model"],
        "tests": comparison["tests"],
        "verdict": comparison["verdict"],
    }


def apply_canary_policy(session: Session, project_id: int, actor: str = "canary-policy") -> dict[str, Any]:
    """Apply the project's `model.canary_policy` once. Compares the canary with production (or `base` while no
    version is production) on the acceptance rate over the window since the canary alias last moved, then:

    - `promoted`: significantly better and the policy is promote or both: production moves to the canary's version
      through the registry's promotion gate, the test recorded in the alias event's reason and `gate["live"]`, and
      the canary alias is cleared (the experiment is over);
    - `rolled_back`: significantly worse and the policy is rollback or both: the canary alias is cleared, so the
      gateway serves production to everyone; the event's `gate["live"]` holds the test;
    - `blocked`: better, but the offline promotion gate refused (nothing moves; an ML engineer can force it);
    - `none`: anything else, with the reason (policy off, no canary, not enough data, no significant difference, or
      a verdict the policy does not act on).

    Returns {project_id, policy, action, reason, canary, baseline, comparison}. The caller commits."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    settings = model_settings(project.settings)
    record: dict[str, Any] = {
        "project_id": project_id,
        "policy": settings.canary_policy,
        "action": "none",
        "reason": "",
        "canary": None,
        "baseline": None,
        "comparison": None,
    }
    if settings.canary_policy == "off":
        return {**record, "reason": "the canary policy is off"}
    canary = registry.alias_version(session, project_id, "canary")
    if canary is None:
        return {**record, "reason": "no canary"}
    production = registry.alias_version(session, project_id, "production")
    baseline = production.name if production is not None else BASE
    record.update(canary=canary.name, baseline=baseline)
    if production is not None and production.id == canary.id:
        return {**record, "reason": "the canary is the production version"}
    alias_row = session.get(AdapterAlias, (project_id, "canary"))
    since = alias_row.updated_at if alias_row is not None else None
    comparison = compare(session, project_id, canary.name, baseline, since=since)
    record["comparison"] = comparison
    verdict = comparison["verdict"]
    if verdict == "not enough data":
        n = comparison["tests"]["acceptance_rate"]["n"]
        need = comparison["min_samples"]
        return {**record, "reason": f"not enough data: {n[0]} and {n[1]} generations with feedback, {need} needed"}
    summary = _summary(comparison)
    if verdict == "better" and settings.canary_policy in ("promote", "both"):
        reason = f"canary policy: {canary.name} significantly better than {baseline} on live feedback; {summary}"
        try:
            event = registry.promote(session, project_id, canary.name, alias="production", actor=actor, reason=reason)
        except Conflict as exc:
            verdict = exc.verdict if isinstance(exc, registry.PromotionRefused) else None
            return {**record, "action": "blocked", "reason": f"{summary}; {exc.detail}", "gate": verdict}
        event.gate = {**event.gate, "live": _evidence(comparison)}
        registry.clear_alias(
            session, project_id, "canary", actor=actor, reason=f"promoted to production; {summary}", gate={}
        )
        return {**record, "action": "promoted", "reason": reason}
    if verdict == "worse" and settings.canary_policy in ("rollback", "both"):
        reason = f"canary policy: {canary.name} significantly worse than {baseline} on live feedback; {summary}"
        registry.clear_alias(
            session, project_id, "canary", actor=actor, reason=reason, gate={"live": _evidence(comparison)}
        )
        return {**record, "action": "rolled_back", "reason": reason}
    return {**record, "reason": f"{verdict} ({settings.canary_policy} policy acts on no such verdict); {summary}"}
