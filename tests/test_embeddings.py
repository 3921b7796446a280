"""core.eval.embeddings: joint t-SNE/UMAP maps, KDEs, distances to the real set, figures, JSON."""
import json

import numpy as np
import plotly.graph_objects as go
import pytest

from core.errors import ConfigError, DataError
from core.eval.embeddings import (
    SET_COLORS,
    SET_NAMES,
    EmbeddingShift,
    FeatureSet,
    analyze_embedding_shift,
    contour_figure,
    distance_figure,
    label_colors,
    kde_figure,
    scatter_figure,
)
from core.eval.metrics import fid_from_features

DIM, CLASSES, PER_CLASS = 12, 3, 15


def _sets(seed=0):
    """real: three class clusters; base: far off (shifted by 2); aligned: closer (shifted by 0.3)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * 4

    def draw(shift):
        feats = np.concatenate([c + rng.normal(size=(PER_CLASS, DIM)) + shift for c in centres])
        return FeatureSet(feats, np.repeat(np.arange(CLASSES), PER_CLASS))

    return draw(0.0), draw(2.0), draw(0.3)


@pytest.fixture(scope="module")
def result():
    real, base, aligned = _sets()
    return analyze_embedding_shift(real, base, aligned, seed=0, kde_grid=120, kde_grid2d=40)


def test_numbers_say_aligned_is_closer_to_real_than_base(result):
    base, aligned = result.overall["base"], result.overall["aligned"]
    assert aligned.frechet < base.frechet
    assert aligned.precision > base.precision and aligned.recall > base.recall
    for d in (base, aligned):
        assert np.isfinite([d.frechet, d.precision, d.recall]).all()
        assert 0.0 <= d.precision <= 1.0 and 0.0 <= d.recall <= 1.0
        assert (d.n_real, d.n_model) == (CLASSES * PER_CLASS, CLASSES * PER_CLASS)
    assert result.counts == {"real": 45, "base": 45, "aligned": 45}


def test_per_class_numbers_use_only_that_class(result):
    real, base, _ = _sets()
    assert sorted(result.per_label) == ["0", "1", "2"] and result.skipped_labels == {}
    one = result.per_label["1"]["base"]
    expected = fid_from_features(real.features[real.labels == 1], base.features[base.labels == 1])
    assert one.frechet == pytest.approx(expected)
    assert one.n_real == one.n_model == PER_CLASS
    for label, row in result.per_label.items():
        assert row["aligned"].frechet < row["base"].frechet, label


def test_projections_hold_the_three_sets_with_normalised_densities(result):
    assert sorted(result.projections) == ["tsne", "umap"]
    for p in result.projections.values():
        assert list(p.coords) == list(SET_NAMES)
        for s in SET_NAMES:
            assert p.coords[s].shape == (45, 2) and np.isfinite(p.coords[s]).all()
            assert p.labels[s] == np.repeat(np.arange(CLASSES), PER_CLASS).tolist()
            assert np.isfinite(p.density_x[s]).all() and (p.density_x[s] >= 0).all()
            assert np.trapezoid(p.density_x[s], p.grid_x) == pytest.approx(1.0, abs=0.03)
            assert np.trapezoid(p.density_y[s], p.grid_y) == pytest.approx(1.0, abs=0.03)
            mass = np.trapezoid(np.trapezoid(p.density_2d[s], p.grid2d_x, axis=1), p.grid2d_y)
            assert p.density_2d[s].shape == (40, 40) and mass == pytest.approx(1.0, abs=0.05)


def test_figures_name_the_three_sets_in_their_fixed_colours(result):
    for method in ("tsne", "umap"):
        fig = scatter_figure(result, method)
        assert isinstance(fig, go.Figure)
        markers = [t for t in fig.data if t.type == "scatter" and t.legendgroup != "labels"]
        assert [t.name for t in markers] == list(SET_NAMES)
        colors = label_colors(str(c) for c in range(CLASSES))
        assert len(set(colors.values())) == CLASSES
        for t in markers:  # points in their class's colour, outlined in their set's; the sets part by symbol
            assert t.marker.line.color == SET_COLORS[t.name]
            assert list(t.marker.color) == [colors[str(c)] for c in np.repeat(np.arange(CLASSES), PER_CLASS)]
        assert len({t.marker.symbol for t in markers}) == 3
        legend = [t for t in fig.data if t.legendgroup == "labels"]  # one legend entry per class, no points
        assert [(t.name, t.marker.color) for t in legend] == list(colors.items())
        contours = [t for t in fig.data if t.type == "contour"]
        assert [t.legendgroup for t in contours] == list(SET_NAMES)
        assert [t.colorscale[0][1] for t in contours] == [SET_COLORS[s] for s in SET_NAMES]

        kde = kde_figure(result, method)
        assert [t.name for t in kde.data] == [s for s in SET_NAMES for _ in range(2)]
        assert all(t.line.color == SET_COLORS[t.name] for t in kde.data)
        assert [t.name for t in contour_figure(result, method).data] == list(SET_NAMES)
    bars = distance_figure(result, "frechet")
    assert [t.name for t in bars.data] == ["base", "aligned"]
    assert list(bars.data[0].x) == ["overall", "0", "1", "2"]
    assert [t.marker.color for t in bars.data] == [SET_COLORS["base"], SET_COLORS["aligned"]]
    assert bars.data[0].y[0] == pytest.approx(result.overall["base"].frechet)
    with pytest.raises(ConfigError, match="metric"):
        distance_figure(result, "fid")


def test_json_round_trip(result, tmp_path):
    text = result.to_json(tmp_path / "shift.json")
    json.loads(text)                                                 # strict JSON: no NaN
    back = EmbeddingShift.from_json(tmp_path / "shift.json")
    assert back.to_json() == text
    assert back.overall == result.overall
    np.testing.assert_array_equal(back.projections["umap"].coords["aligned"],
                                  result.projections["umap"].coords["aligned"])
    assert EmbeddingShift.from_json(text).per_label == result.per_label


@pytest.mark.slow
def test_same_seed_same_maps_other_seed_other_maps(result):
    real, base, aligned = _sets()
    again = analyze_embedding_shift(real, base, aligned, seed=0, kde_grid=120, kde_grid2d=40)
    other = analyze_embedding_shift(real, base, aligned, methods=("umap",), seed=1, kde_grid=20, kde_grid2d=10)
    for m in ("tsne", "umap"):
        for s in SET_NAMES:
            np.testing.assert_array_equal(again.projections[m].coords[s], result.projections[m].coords[s])
    # (t-SNE starts from PCA, so only UMAP's layout depends on the seed)
    assert not np.allclose(other.projections["umap"].coords["real"], result.projections["umap"].coords["real"])
    assert other.overall == result.overall                           # the numbers do not depend on the seed


@pytest.mark.slow
def test_subsampling_for_maps_keeps_numbers_on_all_samples():
    real, base, aligned = _sets()
    r = analyze_embedding_shift(real, base, aligned, methods=("tsne",), max_points_per_set=20, pca_dim=5,
                                kde_grid=20, kde_grid2d=10)
    assert r.projections["tsne"].coords["base"].shape == (20, 2)
    assert len(r.projections["tsne"].labels["base"]) == 20
    assert r.overall["base"].n_model == 45


def test_labels_too_small_or_unknown_to_real_are_skipped_with_a_reason():
    real, base, aligned = _sets()
    base.labels = base.labels.copy()
    base.labels[:12] = 7                                             # class 0 keeps 3 samples in base
    r = analyze_embedding_shift(real, base, aligned, methods=(), k=3)
    assert sorted(r.per_label) == ["1", "2"]
    assert "k=3" in r.skipped_labels["0"] and "no real samples" in r.skipped_labels["7"]


def test_unlabelled_sets_give_overall_numbers_only():
    real, base, aligned = (s.features for s in _sets())
    r = analyze_embedding_shift(real, base, aligned, methods=())
    assert r.per_label == {} and r.projections == {}
    assert r.overall["aligned"].frechet < r.overall["base"].frechet


def test_input_errors():
    real, base, aligned = _sets()
    with pytest.raises(DataError, match="dimensions differ"):
        analyze_embedding_shift(real, base, FeatureSet(aligned.features[:, :5]), methods=())
    with pytest.raises(DataError, match="labels"):
        analyze_embedding_shift(real, FeatureSet(base.features, base.labels[:3]), aligned, methods=())
    with pytest.raises(ConfigError, match="methods"):
        analyze_embedding_shift(real, base, aligned, methods=("pca3d",))
    with pytest.raises(DataError, match="NaN"):
        bad = real.features.copy()
        bad[0, 0] = np.nan
        analyze_embedding_shift(FeatureSet(bad), base, aligned, methods=())


def test_the_three_set_colours_are_far_apart_in_lightness():
    """Not three mid-tone hues that read as one blob: each pair differs in relative luminance by a clear margin."""
    def luminance(hex_color: str) -> float:
        rgb = [int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    values = sorted(luminance(SET_COLORS[s]) for s in SET_NAMES)
    ratios = [(hi + 0.05) / (lo + 0.05) for lo, hi in zip(values, values[1:])]
    assert min(ratios) >= 1.9, ratios
