"""Training fixtures: one tiny code model, bootstrapped once per test session and shared by every training test.

It stops on a step count, not on the clock, so its quality does not depend on how busy the machine is. 300 steps is
what it takes on this corpus for most greedy samples to parse (held-out loss ~0.8; at 200 steps only about half
parse): about 75 s on 2 idle cores, longer on a loaded machine. Set EDITLOOP_TINY_MODEL to a bootstrap output to
skip the build while iterating on other tests."""

import os
from pathlib import Path

import pytest

from trainers.bootstrap import BootstrapConfig, bootstrap, is_bootstrap_output

TINY_MODEL = BootstrapConfig(documents=6000, batch_size=8, max_steps=300, seconds=900)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootstrap output directory (model, tokenizer, editloop-bootstrap.json); treat it as read-only."""
    prebuilt = os.environ.get("EDITLOOP_TINY_MODEL")
    if prebuilt and is_bootstrap_output(Path(prebuilt)):
        return Path(prebuilt)
    path = tmp_path_factory.mktemp("tiny-model") / "model"
    bootstrap(path, TINY_MODEL)
    return path
