"""The demo evaluator: trains on its own split, classifies, standardised features, save/load."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import save_file

from core.demo import evaluator as de
from core.demo import shapes
from core.errors import CheckpointError, ConfigError, DataError


@contextlib.contextmanager
def _one_thread():
    # On the shared 2-core machine, two intra-op threads competing with other processes ran these
    # trainings 3-30× slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    with _one_thread():
        yield


@pytest.fixture(scope="module")
def trained():
    """A short training run: 600 steps of 64 images, the default config (~15 s on one core)."""
    logs: list[str] = []
    with _one_thread():
        model, metrics = de.train_evaluator(steps=600, batch_size=64, lr=3e-3, seed=0, log=logs.append,
                                            val_count=500)
    return model, metrics, logs


@pytest.fixture(scope="module")
def val_images():
    return shapes.images_tensor("val", range(10_000, 10_200))  # [200, 3, 32, 32], [200]


@pytest.mark.slow  # the `trained` fixture: 600 training steps
def test_short_training_classifies_held_out_images(trained):
    model, metrics, logs = trained
    assert metrics["val_accuracy"] >= 0.8  # measured 0.99 at 600 steps; 1.0 at the default 1000
    for name in ("color", "background", "count"):
        assert metrics[f"val_{name}_accuracy"] >= 0.85, name  # chance: 1/8, 1/3, 1/2
    assert metrics["val_position_accuracy"] >= 0.7  # cells are hard to call near their borders
    assert metrics["steps"] == 600 and metrics["val_count"] == 500 and metrics["train_seconds"] > 0
    assert logs and "val accuracy" in logs[-1]
    assert not model.training


@pytest.mark.slow
def test_features_and_logits_shapes(trained, val_images):
    model, _, _ = trained
    images, labels = val_images
    with torch.no_grad():
        feats = model.features(images)
        logits = model.logits(images)
        attrs = model.attribute_logits(images)
    assert feats.shape == (200, model.config.feature_dim) == (200, 16)
    assert logits.shape == (200, 10)
    assert {k: v.shape[1] for k, v in attrs.items()} == {"color": 8, "background": 3, "count": 2, "position": 9}
    assert (logits.argmax(1) == labels).float().mean() >= 0.8
    with torch.no_grad():
        assert torch.allclose(model.features(images[:5]), feats[:5], atol=1e-5)  # eval mode: no batch coupling


@pytest.mark.slow
def test_features_are_standardised_on_real_images(trained):
    model, _, _ = trained
    images, _ = shapes.images_tensor("reference", range(2000))
    with torch.no_grad():
        feats = model.features(images)  # [2000, 16]
    assert feats.mean(0).abs().max() < 0.2
    assert ((feats.std(0) > 0.8) & (feats.std(0) < 1.25)).all()


@pytest.mark.slow
def test_wrong_input_size_is_a_data_error(trained):
    model, _, _ = trained
    with pytest.raises(DataError, match="^images:"):
        model.features(torch.zeros(2, 3, 64, 64))
    with pytest.raises(DataError, match="^images:"):
        model.logits(torch.zeros(3, 32, 32))


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_outputs(trained, val_images, tmp_path):
    model, metrics, _ = trained
    path = tmp_path / "evaluator.safetensors"
    de.save_evaluator(model, path, metrics)
    loaded = de.load_evaluator(path)
    assert loaded.config == model.config and not loaded.training
    images, _ = val_images
    with torch.no_grad():
        assert torch.equal(loaded.features(images), model.features(images))
        assert torch.equal(loaded.logits(images), model.logits(images))
    assert de.read_metrics(path) == json.loads(json.dumps(metrics))


def test_training_is_reproducible_and_seed_dependent():
    def weights(seed):
        model, _ = de.train_evaluator(steps=15, batch_size=20, seed=seed, log=lambda _: None, val_count=20)
        return model.state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["class_head.weight"], c["class_head.weight"])


def test_training_reads_only_the_evaluator_split_and_validates_on_val(monkeypatch):
    seen: list[str] = []
    render, images_tensor = shapes.render, shapes.images_tensor

    def spy_render(split, index, image_size=32):
        seen.append(split)
        return render(split, index, image_size)

    def spy_images_tensor(split, indices, image_size=32):
        seen.append(split)
        return images_tensor(split, indices, image_size)

    monkeypatch.setattr(shapes, "render", spy_render)
    monkeypatch.setattr(shapes, "images_tensor", spy_images_tensor)
    de.train_evaluator(steps=3, batch_size=10, seed=0, log=lambda _: None, val_count=10)
    assert set(seen) == {"evaluator", "val"}
    assert seen[-1] == "val" and seen.count("val") == 10


@pytest.mark.slow
def test_missing_or_corrupt_checkpoint_is_a_checkpoint_error(trained, tmp_path):
    model, _, _ = trained
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        de.load_evaluator(missing)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        de.load_evaluator(garbage)

    good = tmp_path / "good.safetensors"
    de.save_evaluator(model, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        de.load_evaluator(truncated)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a demo evaluator"):
        de.load_evaluator(foreign)

    mismatched = tmp_path / "mismatched.safetensors"
    state = {k: v for k, v in model.state_dict().items() if k != "class_head.bias"}
    save_file(state, str(mismatched), metadata={"format": de.FORMAT, "config": json.dumps({
        "channels": list(model.config.channels), "feature_dim": 16, "hidden_dim": 128, "image_size": 32,
        "pooled_size": 4})})
    with pytest.raises(CheckpointError, match="do not match"):
        de.load_evaluator(mismatched)


def test_bad_config_and_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="^channels:"):
        de.EvaluatorConfig(channels=())
    with pytest.raises(ConfigError, match="^channels:"):
        de.EvaluatorConfig(channels=(8, 8, 8, 8, 8, 8))  # 32 px -> 1 px, below the 4×4 pool
    with pytest.raises(ConfigError, match="^feature_dim:"):
        de.EvaluatorConfig(feature_dim=0)
    with pytest.raises(ConfigError, match="^steps:"):
        de.train_evaluator(steps=0)
    with pytest.raises(ConfigError, match="^lr:"):
        de.train_evaluator(steps=1, lr=0.0)


def test_config_for_64px_inputs_builds_and_checks_sizes():
    model = de.DemoEvaluator(de.EvaluatorConfig(image_size=64)).eval()
    images, _ = shapes.images_tensor("val", range(4), 64)
    with torch.no_grad():
        assert model.features(images).shape == (4, 16)
    with pytest.raises(DataError, match="^images:"):
        model.features(torch.zeros(1, 3, 32, 32))
