"""Project locations, in one place. Overridable through environment variables."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = ROOT / "assets"
CHECKPOINTS_DIR = Path(os.environ.get("VAPI_CHECKPOINTS", ROOT / "checkpoints"))
DEMO_DIR = Path(os.environ.get("VAPI_DEMO_DIR", ROOT / "checkpoints" / "demo"))
RUNS_DIR = Path(os.environ.get("VAPI_RUNS", ROOT / "runs"))
