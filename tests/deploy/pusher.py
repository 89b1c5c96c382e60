"""The deployments' retrain wrapper (deploy/docker/retrain_and_push.py), loaded as a
module: it is a script in the image, not part of the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PUSHER = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "retrain_and_push.py"


def load_pusher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("retrain_and_push", PUSHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
