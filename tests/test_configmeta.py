"""core.configmeta: field metadata -> form specs, argparse options and a checked from_dict, on a toy config;
and the real configs declare help for every field."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import pytest

from core import configmeta
from core.configmeta import setting
from core.errors import ConfigError


@dataclass
class Toy:
    name: str = setting("toy", group="model", help="what it is called")
    steps: int = setting(10, group="train", help="how many steps, 100% of them")
    rate: float = setting(0.5, group="train", help="a rate")
    size: Optional[int] = setting(None, group="train", help="None: native")
    mode: str = setting("a", group="train", choices=("a", "b"), help="one of two")
    tags: list[str] = setting(default_factory=lambda: ["x", "y"], group="train", choices=("x", "y", "z"), help="some")
    ids: Optional[list] = setting(None, group="train", help="ids or names")
    fast: bool = setting(False, group="train", help="go fast")
    weights: dict = setting(default_factory=dict, group="train", help="a mapping")

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError("steps", "must be >= 1")


def test_specs_read_type_default_help_group_and_choices():
    specs = {s.name: s for s in configmeta.specs(Toy)}
    assert list(specs) == ["name", "steps", "rate", "size", "mode", "tags", "ids", "fast", "weights"]
    assert specs["name"] == configmeta.FieldSpec("name", str, None, False, "toy", "what it is called", "model", ())
    assert (specs["size"].type, specs["size"].optional, specs["size"].default) == (int, True, None)
    assert (specs["tags"].type, specs["tags"].item, specs["tags"].choices) == (list, str, ("x", "y", "z"))
    assert (specs["ids"].type, specs["ids"].item, specs["ids"].optional) == (list, None, True)
    assert specs["mode"].choices == ("a", "b") and specs["fast"].type is bool and specs["weights"].type is dict
    assert specs["steps"].flag == "--steps" and configmeta.spec_of(Toy, "rate").help == "a rate"
    # a list default is a fresh copy each time
    configmeta.spec_of(Toy, "tags").default.append("z")
    assert configmeta.defaults(Toy)["tags"] == ["x", "y"]
    with pytest.raises(KeyError, match="Toy has no field 'nope'"):
        configmeta.spec_of(Toy, "nope")


def test_argparse_options_are_generated_from_the_fields():
    names = ["name", "steps", "rate", "size", "mode", "tags", "ids", "fast", "weights"]
    parser = argparse.ArgumentParser()
    configmeta.add_arguments(parser, Toy, names, flags={"ids": "--id"}, defaults={"rate": 0.25})
    args = parser.parse_args([])
    assert configmeta.values_from_args(args, names) == dict(name="toy", steps=10, rate=0.25, size=None, mode="a",
                                                            tags=["x", "y"], ids=None, fast=False, weights={})
    args = parser.parse_args(["--steps", "3", "--size", "256", "--mode", "b", "--tags", "z", "x", "--id", "7", "cat",
                              "--fast", "--weights", '{"mse": 2}'])
    assert Toy(**configmeta.values_from_args(args, names)) == Toy(steps=3, rate=0.25, size=256, mode="b",
                                                                  tags=["z", "x"], ids=["7", "cat"], fast=True,
                                                                  weights={"mse": 2})
    for bad in (["--mode", "c"], ["--tags", "w"], ["--steps", "1.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    text = parser.format_help()
    assert "how many steps, 100% of them (default: 10)" in " ".join(text.split())
    assert "a rate (default: 0.25)" in " ".join(text.split())

    required = argparse.ArgumentParser()
    configmeta.add_arguments(required, Toy, ["name"], required=["name"])
    with pytest.raises(SystemExit):
        required.parse_args([])
    assert required.parse_args(["--name", "n"]).name == "n"


def test_from_dict_names_an_unknown_key_and_lists_the_fields():
    assert configmeta.from_dict(Toy, {"steps": 2, "entry": "x"}, "a toy", ignore=("entry",)) == Toy(steps=2)
    with pytest.raises(ConfigError, match=r"^colour: not a field of a toy; the fields are fast, ids, mode, name, rate, "):
        configmeta.from_dict(Toy, {"colour": 1, "steps": 2}, "a toy")
    with pytest.raises(ConfigError, match="^steps: must be >= 1"):  # the class's own checks still run
        configmeta.from_dict(Toy, {"steps": 0}, "a toy")


def test_every_field_of_the_real_configs_has_help_and_a_group():
    from core.eval.configs import EmbeddingConfig, EvalConfig
    from core.vapi.config import VapiConfig

    for cls in (VapiConfig, EvalConfig, EmbeddingConfig):
        for spec in configmeta.specs(cls):
            assert spec.help and spec.group, (cls.__name__, spec.name)
    assert configmeta.spec_of(VapiConfig, "beta").help == "weight of the prior term, Table 7"
    assert configmeta.spec_of(VapiConfig, "method").choices == ("vapi", "ste", "decoder")
    with pytest.raises(ConfigError, match="^colour: not a field of a run config"):
        VapiConfig.from_dict({"colour": 1})


def test_a_retired_field_in_an_old_run_config_loads_but_cannot_be_set():
    from core.vapi import config as C

    old = {**C.VapiConfig().to_dict(), "num_workers": 2}  # a config.json written before the field was dropped
    assert C.VapiConfig.from_dict(old) == C.VapiConfig()
    assert C.resolve(base=old, overrides={"max_steps": 5}) == C.VapiConfig(max_steps=5)
    with pytest.raises(ConfigError, match="^num_workers: is no longer a setting"):
        C.resolve("demo-c2i", {"num_workers": 0})


def test_the_train_cli_lists_every_config_field_with_its_default_and_help():
    from core.vapi.config import VapiConfig

    text = configmeta.describe(VapiConfig)
    for spec in configmeta.specs(VapiConfig):
        assert f"  {spec.name} = " in text and spec.help in text
    assert '  beta = 0.1: weight of the prior term, Table 7\n' in text
    assert "  method = \"vapi\": " in text and "(one of vapi, ste, decoder)" in text
