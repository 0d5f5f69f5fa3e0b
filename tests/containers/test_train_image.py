"""The training image: the CPU build of torch (no CUDA packages), and the `charrnn` command runs in it with
only the `train` extra installed."""

from __future__ import annotations

import json

import pytest

from tests.containers.engine import Engine

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

TORCH_BUILD = """
import importlib.metadata as md, json, torch
names = sorted(d.metadata["Name"].lower() for d in md.distributions())
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "names": names}))
"""


def test_the_training_image_holds_the_cpu_torch_and_runs_charrnn(engine: Engine, train_image: str) -> None:
    probe = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python", train_image, "-c", TORCH_BUILD)
    facts = json.loads(probe.stdout)
    assert facts["torch"].endswith("+cpu") and facts["cuda"] is None, facts["torch"]
    assert not [n for n in facts["names"] if n.startswith(("nvidia-", "triton"))], "CUDA packages in the image"
    usage = engine.docker("run", "--rm", "--network", "none", "--read-only", train_image, "train", "--help")
    assert "--export" in usage.stdout
