"""core.device: the one device-set parser and what is built on it (canonical text, GPU ids, conflicts,
a picker's selection, the set a config's device holds, GPUs that exist)."""
from __future__ import annotations

import pytest
import torch

from core import device as D
from core.errors import ConfigError


@pytest.mark.parametrize("text, parts, canonical", [
    ("cpu", ("cpu",), "cpu"), (" CPU ", ("cpu",), "cpu"), ("cuda", ("cuda:0",), "cuda:0"),
    ("cuda:0", ("cuda:0",), "cuda:0"), ("cuda:1,0", ("cuda:0", "cuda:1"), "cuda:0,1"),
    ("cuda:0,cuda:1", ("cuda:0", "cuda:1"), "cuda:0,1"), (" CUDA:3,1,cuda:1 ", ("cuda:1", "cuda:3"), "cuda:1,3"),
])
def test_device_sets_parse_to_sorted_unique_devices(text, parts, canonical):
    assert D.parse_devices(text) == parts
    assert D.normalize_devices(text) == canonical
    assert D.gpu_ids(text) == [int(p[5:]) for p in parts if p != "cpu"]


@pytest.mark.parametrize("text, why", [("", "empty device set"), ("gpu", "'gpu' is not a device set"),
                                       ("cuda:x", "'x' is not a GPU index"), ("cuda:0,,1", "'' is not a GPU index")])
def test_a_bad_device_set_names_the_field_and_the_forms_it_takes(text, why):
    with pytest.raises(ConfigError, match=f"^devices: .*{why}.*expected 'cpu', 'cuda:0' or a GPU list"):
        D.parse_devices(text)
    with pytest.raises(ConfigError, match="^--devices: "):
        D.normalize_devices(text, "--devices")


def test_conflicts_share_a_device():
    assert D.devices_conflict("cpu", "cpu") and D.devices_conflict("cuda:0,1", "cuda:1")
    assert not D.devices_conflict("cuda:0,1", "cuda:2,3") and not D.devices_conflict("cpu", "cuda:0")


def test_a_picker_selection_is_cpu_alone_or_gpus():
    assert D.picked_devices(["cpu"]) == "cpu" and D.picked_devices("cpu") == "cpu"
    assert D.picked_devices(["cuda:2", " cuda:0 "]) == "cuda:0,2"
    for bad, why in [([], "pick cpu or at least one GPU"), (None, "pick cpu or at least one GPU"),
                     (["cpu", "cuda:0"], "cpu cannot be combined"), (["gpu0"], "'gpu0' is not a device")]:
        with pytest.raises(ConfigError, match=f"^devices: {why}"):
            D.picked_devices(bad)


def test_the_set_a_config_device_holds_and_visible_gpus():
    assert D.devices_of("cpu") == "cpu" and D.devices_of("cuda") == "cuda:0" and D.devices_of("cuda:1") == "cuda:1"
    assert D.devices_of("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert D.devices_of("cuda", processes=4) == "cuda:0,1,2,3" and D.devices_of("cpu", processes=2) == "cpu"
    assert D.check_visible("CPU") == "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match="^--devices: cuda:.*(no CUDA GPU|GPU\\(s\\) are visible)"):
        D.check_visible(f"cuda:{n}")
