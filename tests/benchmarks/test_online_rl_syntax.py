"""The online-RL syntax benchmark refuses bad arguments by name before it trains anything."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "online_rl_syntax.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configs", "nope=1"], "--configs: config.nope: Extra inputs are not permitted"),
        (["--configs", "num_generations=3"], "--configs: config.num_generations"),
        ([], "holds no model"),
        (["--model"], "name at least one base model"),
        (["--bootstrap-seeds", "x"], "--bootstrap-seeds: invalid"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path: Path, args: list[str], message: str) -> None:
    model = [] if args[:1] == ["--model"] else ["--model", str(tmp_path)]
    result = subprocess.run([sys.executable, str(SCRIPT), *model, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr
