"""benchmarks/gpu.sh --cpu, the GPU run's smoke test: the same model config family in tiny shapes, our DPO against
TRL's defaults on the same data, the report written, the GPU-only sections marked as not run."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu.sh"),
            "--cpu",
            "--results-dir",
            str(tmp_path),
            "--work",
            str(tmp_path / "w"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [report] = tmp_path.glob("gpu-cpu-*.json")
    record = json.loads(report.read_text())
    assert record["mode"] == "cpu smoke"
    for setup in ("lora", "trl_defaults"):
        assert record["dpo"][setup]["steps"] == 3 and record["dpo"][setup]["pairs_per_s"] > 0
    assert record["dpo"]["qlora_4bit"]["result"] == "not run"
    assert record["vllm"]["result"] == "not run" and record["grpo"]["result"] == "not run"
