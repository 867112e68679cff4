"""The promotion gate on real training runs: a collapsed adapter (DPO at 100x the default learning rate) is refused
on a project with no production version, judged against the base on the same held-out examples, and a run of the
default learning rate passes and is recorded with its paired verdict."""

from pathlib import Path

import pytest

from core.db import session_scope
from core.errors import Conflict
from trainers import gate, registry
from trainers.config import DPORunConfig

from .test_style_rule import AXIS, train
from .tiny import style_project

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_a_collapsed_adapter_is_refused_and_a_sane_one_passes(
    sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    project_id = style_project(sqlite_url, tiny_model, n=300, axis=AXIS, value="double", min_edit_distance=0.001)
    high = 100 * DPORunConfig().learning_rate
    collapsed = train(sqlite_url, project_id, "dpo", tmp_path, learning_rate=high, max_steps=30)
    with session_scope(sqlite_url) as session, pytest.raises(Conflict, match="than base's beyond noise") as refused:
        registry.promote(session, project_id, collapsed.name, actor="t")
    guards = collapsed.metrics["eval"]["guardrails"]
    print(f"collapsed (lr {high:g}): {refused.value.detail}; guardrails {guards}")

    # The default learning rate, for test_style_rule's 50 steps: on this one-rule project the full default (90
    # steps, three epochs) over-optimises, and the gate refuses it for its parse rate, as it should.
    sane = train(sqlite_url, project_id, "dpo", tmp_path, max_steps=50)
    with session_scope(sqlite_url) as session:
        event = registry.promote(session, project_id, sane.name, actor="t")
        verdict = event.gate
    print(f"defaults: {verdict['reasons']}\n{gate.summary(verdict)}")
    assert verdict["passed"] and set(verdict["against"]) == {"base"}
    assert verdict["examples"]["n"] == len(sane.metrics["eval"]["per_example"]) >= 40
    assert verdict["against"]["base"]["measures"]["edit_distance"]["difference"] < 0  # closer to what users keep
