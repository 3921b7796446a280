"""core.eval.metrics (FID, precision/recall, IS) and core.eval.extractors (registry, torch-fidelity route)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from core.errors import CheckpointError, ConfigError, DataError, MissingWeightsError
from core.eval import extractors as ex
from core.eval.metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    inception_score_from_logits,
    precision_recall,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------- FID

def test_feature_stats_equal_numpy_mean_and_cov_across_chunks():
    x = _rng().normal(size=(301, 7)).astype(np.float32)
    mu, sigma = feature_stats(x, chunk_size=50)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    assert mu.dtype == sigma.dtype == np.float64


def test_fid_of_a_set_with_itself_is_zero():
    x = _rng().normal(size=(400, 16))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fid_grows_with_mean_shift_as_its_square():
    x = _rng().normal(size=(400, 16)) @ _rng(1).normal(size=(16, 16))
    direction = np.ones(16) / 4.0                                  # |direction| = 1
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    fids = [fid_from_features(x, x + s * direction) for s in shifts]
    assert all(a < b for a, b in zip(fids, fids[1:]))
    # same covariance: the trace terms cancel and only |mu1 - mu2|^2 is left
    np.testing.assert_allclose(fids, np.square(shifts), rtol=1e-7, atol=1e-7)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)   # = 5 + 1 + 1 + 0.25
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7.25)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    rng = _rng(3)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    s1, s2 = a @ a.T + 0.1 * np.eye(12), b @ b.T + 0.1 * np.eye(12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_approaches_the_gaussians_closed_form():
    rng = _rng(4)
    cov1, cov2 = np.diag([1.0, 2.0, 0.5]), np.diag([2.0, 2.0, 0.5])
    x = rng.multivariate_normal([0, 0, 0], cov1, size=20000)
    y = rng.multivariate_normal([1, 0, 0], cov2, size=20000)
    expected = 1.0 + (1.0 - math.sqrt(2.0)) ** 2
    assert fid_from_features(x, y) == pytest.approx(expected, abs=0.05)


def test_frechet_distance_with_rank_deficient_covariances_is_finite_and_symmetric():
    # fewer samples than dimensions: singular covariances, as for per-class statistics
    rng = _rng(5)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.3
    m1, s1 = feature_stats(x)
    m2, s2 = feature_stats(y)
    d12, d21 = frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1)
    assert np.isfinite(d12) and d12 > 0
    assert d12 == pytest.approx(d21, rel=1e-6)
    # reference: the usual eps-regularised scipy.linalg.sqrtm route
    off = 1e-10 * np.eye(64)
    covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off)).real
    ref = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * covmean)
    assert d12 == pytest.approx(ref, rel=1e-4)


def test_frechet_distance_agrees_with_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = _rng(6)
    x, y = rng.normal(size=(300, 32)), rng.normal(size=(250, 32)) * 1.5 + 0.2
    st1, st2 = feature_stats(x), feature_stats(y)
    ref = fid_statistics_to_metric({"mu": st1[0], "sigma": st1[1]}, {"mu": st2[0], "sigma": st2[1]}, False)
    assert frechet_distance(*st1, *st2) == pytest.approx(ref["frechet_inception_distance"], rel=1e-9)


def test_low_rank_route_equals_the_covariance_route():
    # N * M <= D^2 takes the nuclear-norm route in fid_from_features; both are exact
    rng = _rng(9)
    x, y = rng.normal(size=(20, 48)), rng.normal(size=(30, 48)) * 1.2 + 0.1
    assert 20 * 30 <= 48 ** 2
    assert fid_from_features(x, y) == pytest.approx(frechet_distance(*feature_stats(x), *feature_stats(y)),
                                                    rel=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((5,)), np.zeros((1, 4)), np.full((5, 3), np.nan)])
def test_fid_rejects_bad_features(bad):
    with pytest.raises(DataError):
        fid_from_features(bad, np.zeros((5, 3)))


def test_fid_rejects_mismatched_dimensions():
    with pytest.raises(DataError, match="dimensions differ"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(DataError, match="covariance"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ---------------------------------------------------------------------------------- precision / recall

def _grid(offset, n=6):
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2).astype(np.float64)
    return g + offset                                              # [n*n, 2]


def test_precision_recall_of_identical_sets_is_one():
    x = _rng().normal(size=(200, 8))
    pr = precision_recall(x, x.copy())
    assert (pr.precision, pr.recall, pr.k) == (1.0, 1.0, 3)


def test_precision_recall_of_disjoint_sets_is_zero():
    pr = precision_recall(_grid(0.0), _grid(1000.0))
    assert (pr.precision, pr.recall) == (0.0, 0.0)


def test_precision_recall_subset_is_asymmetric():
    # real covers two far-apart clusters; generated reproduces only the first (mode dropping)
    a, b = _grid(0.0), _grid(100.0)
    real, generated = np.concatenate([a, b]), a.copy()
    pr = precision_recall(real, generated)
    assert pr.precision == 1.0                          # every generated sample is realistic
    assert pr.recall == pytest.approx(len(a) / len(real))  # only half the real manifold is covered
    swapped = precision_recall(generated, real)
    assert (swapped.precision, swapped.recall) == (pytest.approx(0.5), 1.0)


def test_precision_recall_does_not_depend_on_chunk_size_and_matches_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    rng = _rng(7)
    real = rng.normal(size=(150, 10)).astype(np.float32)
    gen = (rng.normal(size=(120, 10)) + 1.0).astype(np.float32)
    whole = precision_recall(real, gen, k=3, chunk_size=10_000)
    chunked = precision_recall(real, gen, k=3, chunk_size=7)
    assert whole == chunked
    ref = prc_features_to_metric(torch.from_numpy(gen), torch.from_numpy(real), prc_neighborhood=3,
                                 prc_batch_size=10_000, save_cpu_ram=False, verbose=False)
    assert whole.precision == pytest.approx(ref["precision"], abs=1e-6)
    assert whole.recall == pytest.approx(ref["recall"], abs=1e-6)
    assert 0.0 < whole.precision < 1.0 and 0.0 < whole.recall < 1.0


def test_precision_recall_validates_inputs():
    with pytest.raises(DataError, match="at least 4"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ConfigError, match="k: must be"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)
    with pytest.raises(DataError, match="dimensions differ"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


# ------------------------------------------------------------------------------------------- Inception Score

def test_inception_score_of_uniform_predictions_is_one():
    score = inception_score(np.full((100, 10), 0.1), splits=5)
    assert score.mean == pytest.approx(1.0) and score.std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_predictions_spread_evenly_is_the_class_count():
    classes = 8
    probs = np.eye(classes)[np.arange(160) % classes]              # [160, 8], each split holds all classes
    score = inception_score(probs, splits=4)
    assert score.mean == pytest.approx(classes) and score.std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_hand_computed_two_samples():
    # q = [0.75, 0.25]; KL1 = ln(1/0.75); KL2 = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
    kl = (math.log(1 / 0.75) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)) / 2
    score = inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1)
    assert score.mean == pytest.approx(math.exp(kl), rel=1e-12)
    assert score.mean == pytest.approx(1.24081, abs=1e-5)


def test_inception_score_from_logits_matches_torch_fidelity_unshuffled():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = _rng(8).normal(size=(500, 12)) * 3
    ours = inception_score_from_logits(logits, splits=10)
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert ours.mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert ours.std == pytest.approx(ref["inception_score_std"], rel=1e-8)


def test_inception_score_validates_inputs():
    with pytest.raises(DataError, match="probabilities"):
        inception_score(np.full((10, 4), 0.5), splits=1)
    with pytest.raises(ConfigError, match="splits"):
        inception_score(np.full((10, 4), 0.25), splits=11)


# --------------------------------------------------------------------------------------- extractor registry

def test_registry_lists_the_four_extractors_and_rejects_unknown_names():
    assert {"inception", "clip", "dinov2", "demo"} <= set(ex.EXTRACTORS)
    with pytest.raises(ConfigError, match="unknown extractor 'vgg'.*clip"):
        ex.build_extractor("vgg")


@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_missing_inception_weights_error_names_file_folder_and_url(empty_torch_hub):
    with pytest.raises(MissingWeightsError) as err:
        ex.build_extractor("inception")
    msg = str(err.value)
    assert ex.INCEPTION_WEIGHTS_FILE in msg
    assert str(empty_torch_hub / "checkpoints") in msg
    assert ex.INCEPTION_WEIGHTS_URL in msg
    # torch-fidelity itself looks for exactly this file name (the URL's basename) in that folder
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    assert URL_INCEPTION_V3 == ex.INCEPTION_WEIGHTS_URL
    assert URL_INCEPTION_V3.rsplit("/", 1)[1] == ex.INCEPTION_WEIGHTS_FILE


def test_fidelity_metrics_checks_weights_before_reading_any_input(empty_torch_hub, tmp_path):
    with pytest.raises(MissingWeightsError, match=ex.INCEPTION_WEIGHTS_FILE):
        ex.fidelity_metrics(tmp_path / "no-such-folder", tmp_path / "nor-this")


def test_inception_weights_with_a_wrong_hash_in_their_name_are_refused(empty_torch_hub):
    folder = empty_torch_hub / "checkpoints"
    folder.mkdir(parents=True)
    (folder / ex.INCEPTION_WEIGHTS_FILE).write_bytes(b"truncated download")
    with pytest.raises(CheckpointError, match="6726825d"):
        ex.build_extractor("inception")


def test_download_inception_weights_lands_where_the_extractor_looks_and_checks_the_hash(empty_torch_hub,
                                                                                         monkeypatch):
    fetched = []

    def fake_download(url, dst, progress=True):
        fetched.append(url)
        with open(dst, "wb") as f:
            f.write(b"not the real weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(CheckpointError, match="6726825d"):
        ex.download_inception_weights()
    assert fetched == [ex.INCEPTION_WEIGHTS_URL]
    assert not (empty_torch_hub / "checkpoints" / ex.INCEPTION_WEIGHTS_FILE).exists()   # bad file removed

    def offline(url, dst, progress=True):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingWeightsError, match="copy it to"):
        ex.download_inception_weights()


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A random-weight Inception-v3 state dict with the FID network's keys (torchvision names them alike)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for m in net.modules():  # variance-preserving init, so pool3 features vary between images
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def _two_image_sets(n=4, size=32):
    g = torch.Generator().manual_seed(1)
    dark = torch.rand(n, 3, size, size, generator=g) * 0.8 - 1.0    # in [-1, -0.2]
    bright = torch.rand(n, 3, size, size, generator=g) * 1.2 - 0.2  # in [-0.2, 1]
    bright[:, 0] = 1.0                                               # and red
    return dark, bright


@pytest.mark.slow
def test_inception_extractor_agrees_with_torch_fidelity_on_pngs_and_npz(random_inception_weights, tmp_path):
    """Our route (tensors -> extractor -> metrics.py) equals torch-fidelity's (PNG folder / .npz Dataset).

    torch-fidelity's own FID is left out here (its eigvals of a 2048 x 2048 product takes ~20 s on two
    cores); its FID formula is compared with ours above, and IS at rel 1e-5 pins the logits, which
    are pool3 features times a fixed matrix.
    """
    from PIL import Image

    from core.eval.reference import to_uint8_nhwc, write_npz

    gen, ref = _two_image_sets()
    gen_npz = write_npz(tmp_path / "gen.npz", gen)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i, img in enumerate(to_uint8_nhwc(ref)):
        Image.fromarray(img).save(ref_dir / f"{i:06d}.png")

    tf = ex.fidelity_metrics(gen_npz, ref_dir, fid=False, weights_path=random_inception_weights, batch_size=4,
                             isc_splits=1, prc_k=3, cuda=False)
    assert set(tf) == {"is_mean", "is_std", "precision", "recall"}

    inc = ex.build_extractor("inception", weights_path=random_inception_weights)
    g, r = ex.extract(inc, gen_npz, batch_size=3), ex.extract(inc, ref, batch_size=4)
    assert g.features.shape == (4, 2048) and g.logits.shape == (4, 1008)
    assert g.features.std(0).mean() > 0                              # not a constant map
    assert tf["is_mean"] == pytest.approx(inception_score_from_logits(g.logits, splits=1).mean, rel=1e-5)
    pr = precision_recall(r.features, g.features, k=3)
    assert (tf["precision"], tf["recall"]) == (pytest.approx(pr.precision), pytest.approx(pr.recall))
    assert fid_from_features(g.features, r.features) > 0
    # a float tensor gives the features of the .npz it was written to
    torch.testing.assert_close(inc.features(gen[:1]), g.features[:1])


def test_fidelity_metrics_passes_our_settings_to_torch_fidelity(random_inception_weights, tmp_path, monkeypatch):
    import torch_fidelity

    from core.eval.reference import NpzImageDataset, write_npz

    seen = {}

    def fake_calculate_metrics(**kwargs):
        seen.update(kwargs)
        return {"frechet_inception_distance": 12.5, "inception_score_mean": 3.0, "inception_score_std": 0.1,
                "precision": 0.7, "recall": 0.6, "f_score": 0.65}

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", fake_calculate_metrics)
    gen_npz = write_npz(tmp_path / "gen.npz", torch.zeros(4, 3, 8, 8))
    (tmp_path / "ref").mkdir()
    out = ex.fidelity_metrics(gen_npz, tmp_path / "ref", weights_path=random_inception_weights, cuda=False)
    assert out == {"fid": 12.5, "is_mean": 3.0, "is_std": 0.1, "precision": 0.7, "recall": 0.6}
    assert isinstance(seen["input1"], NpzImageDataset) and seen["input2"] == str(tmp_path / "ref")
    assert seen["feature_extractor_weights_path"] == str(random_inception_weights)
    assert seen["cache"] is False and seen["samples_shuffle"] is False
    with pytest.raises(ConfigError, match="reference"):
        ex.fidelity_metrics(gen_npz, None, weights_path=random_inception_weights)


# ----------------------------------------------------------------------------------- transformers extractors

def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    return CLIPModel(cfg)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 3, "red": 4, "cube": 5, "blue": 6, "ball": 7, "of": 8, "photo": 9}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")


def _images(n=4, size=40, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_clip_extractor_plumbing_with_a_tiny_random_model_saved_and_loaded_from_a_folder(tmp_path):
    _tiny_clip().save_pretrained(tmp_path / "clip")
    _tiny_tokenizer().save_pretrained(tmp_path / "clip")
    clip = ex.build_extractor("clip", name_or_path=str(tmp_path / "clip"))
    imgs = _images()
    out = clip.extract(imgs)
    assert out.features.shape == (4, 24) and out.logits is None
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(4))
    # batch composition does not change an image's embedding
    torch.testing.assert_close(clip.features(imgs[1:2]), out.features[1:2], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.features[0], out.features[1])
    text = clip.text_features(["a photo of a red cube", "a blue ball"])
    assert text.shape == (2, 24)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2))
    assert not torch.allclose(text[0], text[1])
    with pytest.raises(ConfigError, match="no classifier logits"):
        clip.logits(imgs)


def test_clip_extractor_from_a_model_object_and_raw_embeddings():
    model = _tiny_clip()
    clip = ex.build_extractor("clip", model=model, normalize=False)
    imgs = _images(2, size=32)
    with torch.no_grad():
        pixel = ex._normalize((imgs + 1) / 2, ex.CLIP_MEAN, ex.CLIP_STD)
        out = model.get_image_features(pixel_values=pixel)
    direct = out if torch.is_tensor(out) else out.pooler_output
    torch.testing.assert_close(clip.features(imgs), direct)
    ids = torch.tensor([[3, 4, 5, 2], [3, 6, 7, 2]])
    assert clip.text_features_from_ids(ids).shape == (2, 24)
    with pytest.raises(ConfigError, match="tokenizer"):
        clip.text_features(["a red cube"])


def test_dinov2_extractor_plumbing_with_a_tiny_random_model(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             image_size=28, patch_size=7)).save_pretrained(tmp_path / "dino")
    dino = ex.build_extractor("dinov2", name_or_path=str(tmp_path / "dino"), image_size=28)
    out = ex.extract(dino, _images(5, size=36), batch_size=2)
    assert out.features.shape == (5, 32) and out.logits is None
    assert torch.isfinite(out.features).all()
    assert not torch.allclose(out.features[0], out.features[1])


@pytest.mark.parametrize("name,hub_id", [("clip", ex.DEFAULT_CLIP), ("dinov2", ex.DEFAULT_DINOV2)])
def test_hub_model_missing_offline_names_the_model_and_the_download_command(name, hub_id, tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        ex.build_extractor(name, local_files_only=True, cache_dir=tmp_path / "hf")
    msg = str(err.value)
    assert hub_id in msg and f"hf download {hub_id}" in msg and "offline" in msg


def test_local_model_folder_without_weights_is_reported(tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nothing")):
        ex.build_extractor("clip", name_or_path=str(tmp_path / "nothing"))
    _tiny_clip().config.save_pretrained(tmp_path / "config-only")      # config.json, no weights
    with pytest.raises(MissingWeightsError, match="incomplete"):
        ex.build_extractor("clip", name_or_path=str(tmp_path / "config-only"))


def test_images_outside_the_contract_are_rejected():
    clip = ex.build_extractor("clip", model=_tiny_clip())
    with pytest.raises(DataError, match=r"\[B,3,H,W\]"):
        clip.features(torch.zeros(2, 1, 32, 32))
    with pytest.raises(DataError, match="uint8"):
        clip.features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------------ demo

def test_demo_extractor_missing_weights_names_the_file(tmp_path, monkeypatch):
    from core import paths

    monkeypatch.setattr(paths, "DEMO_DIR", tmp_path)
    with pytest.raises(MissingWeightsError, match="evaluator.safetensors"):
        ex.build_extractor("demo")


def test_demo_extractor_with_the_real_demo_evaluator(tmp_path):
    from core.demo import evaluator as demo_evaluator

    torch.manual_seed(0)
    model = demo_evaluator.DemoEvaluator(demo_evaluator.EvaluatorConfig()).eval()
    path = tmp_path / "evaluator.safetensors"
    demo_evaluator.save_evaluator(model, path)
    demo = ex.build_extractor("demo", path=path)
    imgs = _images(3, size=32)
    out = ex.extract(demo, imgs, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(out.features, model.features(imgs))
        torch.testing.assert_close(out.logits, model.logits(imgs))
