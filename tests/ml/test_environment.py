"""The training process's environment: offline, and quiet about what offline necessarily skips."""

import os
import subprocess
import sys


def test_offline_runs_do_not_warn_about_the_hub_kernel_bitsandbytes_cannot_fetch() -> None:
    code = (
        "import logging; logging.basicConfig()\n"
        "from ml.environment import offline_env; offline_env()\n"
        "import bitsandbytes, os; print(os.environ['HF_HUB_OFFLINE'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "EDITLOOP_ALLOW_DOWNLOADS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert "kernels-community" not in done.stderr and "WARNING" not in done.stderr, done.stderr
