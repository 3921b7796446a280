import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _device_locks_of_this_test(tmp_path_factory, monkeypatch):
    # device claims are machine-wide (core.runs.claims): each test gets its own machine
    monkeypatch.setenv("VAPI_STATE_DIR", str(tmp_path_factory.mktemp("vapi-state")))


@pytest.fixture(autouse=True)
def _torch_threads():
    # Two cores on CI: keep each test deterministic and bounded.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """A tiny random demo (VQ 16 px + GPT) standing in for checkpoints/demo, in-process and for subprocesses."""
    from core import paths
    from core.models import registry
    from tests.helpers import make_tiny_demo

    folder = make_tiny_demo(tmp_path / "demo")
    monkeypatch.setattr(paths, "DEMO_DIR", folder)
    monkeypatch.setenv("VAPI_DEMO_DIR", str(folder))
    registry.register_demo_presets()
    yield folder
    monkeypatch.undo()
    if "demo-c2i" in registry.GENERATORS:
        registry.register_demo_presets()
