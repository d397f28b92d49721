"""Tests of the experiments module: CSGM wiring and the claims table (synthetic rows, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import train_tiny_glow

from deepinv_glowprior import experiments
from deepinv_glowprior.cli import main
from deepinv_glowprior.dcgan import CSGMReconstructor, DCGANConfig, DCGANGenerator
from deepinv_glowprior.experiments import FAILS, HOLDS, NOT_MEASURED, claims_table

torch.set_num_threads(1)


def _cs_rows(glow: dict[float, float], others: dict[str, dict[float, float]], dataset="mnist"):
    rows = []
    for ratio, value in glow.items():
        rows.append(
            {
                "experiment": "cs",
                "dataset": dataset,
                "ratio": ratio,
                "method": "Glow",
                "psnr": value,
            }
        )
        for method, values in others.items():
            rows.append(
                {
                    "experiment": "cs",
                    "dataset": dataset,
                    "ratio": ratio,
                    "method": method,
                    "psnr": values[ratio],
                }
            )
    return rows


def _verdicts(rows, **kwargs) -> dict[str, str]:
    return {row["claim"]: row["verdict"] for row in claims_table(rows, **kwargs)}


RATIOS = (0.05, 0.1, 0.2, 0.5)
LASSO = {"Lasso-DCT": dict.fromkeys(RATIOS, 15.0), "Lasso-wavelet": dict.fromkeys(RATIOS, 18.0)}


def test_claims_hold_on_rows_that_satisfy_them():
    rows = _cs_rows(
        {0.05: 10.0, 0.1: 20.0, 0.2: 30.0, 0.5: 40.0},
        {**LASSO, "CSGM": dict.fromkeys(RATIOS, 21.0)},
    )
    rows += _cs_rows({0.2: 25.0, 0.5: 30.0}, LASSO, dataset="fashion_mnist")
    rows += [
        {"experiment": "denoise", "sigma": 0.1, "method": "Glow", "psnr": 29.8},  # tie: 0.2 dB
        {"experiment": "denoise", "sigma": 0.1, "method": "BM3D", "psnr": 30.0},
        {"experiment": "denoise", "sigma": 0.2, "method": "Glow", "psnr": 27.0},
        {"experiment": "denoise", "sigma": 0.2, "method": "BM3D", "psnr": 25.0},
        {"experiment": "inpaint", "method": "Glow gamma=0", "psnr": 30.0},
        {"experiment": "inpaint", "method": "Glow gamma=0.1", "psnr": 28.0},
        {"experiment": "inpaint", "method": "CSGM", "psnr": 20.0},
    ]
    table = claims_table(rows)
    verdicts = {row["claim"]: row["verdict"] for row in table}
    assert verdicts == {
        "1a": HOLDS,  # the 0.05 row (Glow below Lasso) is outside the claim
        "1b": HOLDS,
        "1c": HOLDS,
        "1d": NOT_MEASURED,
        "2a": NOT_MEASURED,
        "2b": HOLDS,
        "3a": HOLDS,
        "3b": HOLDS,
        "4": HOLDS,
        "5": NOT_MEASURED,
        "6": NOT_MEASURED,
    }
    first = table[0]
    assert "m/n=0.1: Glow 20.0 vs Lasso-wavelet 18.0 (+2.0)" in first["ours"]
    assert first["why"] == "smallest margin +2.0 dB (m/n=0.1)"
    assert "glowprior benchmark bias" in {r["claim"]: r for r in table}["5"]["why"]


def test_a_failing_claim_says_where_and_by_how_much():
    rows = _cs_rows(
        {0.1: 20.0, 0.2: 21.0, 0.5: 40.0},
        {
            "Lasso-DCT": {0.1: 15.0, 0.2: 17.0, 0.5: 30.0},
            "Lasso-wavelet": {0.1: 16.0, 0.2: 18.0, 0.5: 41.0},
            "CSGM": {0.1: 25.0, 0.2: 22.0, 0.5: 22.0},
        },
    )
    table = {row["claim"]: row for row in claims_table(rows)}
    assert table["1a"]["verdict"] == FAILS
    assert table["1a"]["why"] == "fails at m/n=0.5: Glow 40.0 dB, Lasso-wavelet 41.0 dB"
    assert table["1b"]["verdict"] == FAILS  # +3 dB at m/n = 0.2, not 5
    assert "+3.0" in table["1b"]["ours"]
    assert table["1c"]["verdict"] == FAILS  # CSGM above Glow at 0.2; 0.1 is outside the claim
    assert table["1c"]["why"] == "fails at m/n=0.2: Glow 21.0 dB, CSGM 22.0 dB"
    for key in ("2a", "2b", "3a", "3b", "4"):
        assert table[key]["verdict"] == NOT_MEASURED, key


def test_ties_count_as_at_only_within_the_margin():
    rows = [
        {"experiment": "denoise", "sigma": 0.1, "method": "Glow", "psnr": 29.0},
        {"experiment": "denoise", "sigma": 0.1, "method": "BM3D", "psnr": 30.0},
    ]
    assert _verdicts(rows)["3a"] == FAILS
    assert _verdicts(rows, tie_db=1.0)["3a"] == HOLDS


def test_csv_round_trip_feeds_the_claims_table(tmp_path):
    rows = _cs_rows({0.1: 20.0, 0.2: 30.0}, LASSO)
    path = experiments.write_csv(rows, tmp_path / "cs.csv")
    back = experiments.read_csv(path)
    assert back == rows
    assert claims_table(back) == claims_table(rows)


# -- CSGM wiring ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glow32():
    """A Glow of the DCGAN's image size (untrained weights, ActNorm initialised)."""
    from deepinv_glowprior import Glow

    torch.manual_seed(0)
    glow = Glow(img_size=(1, 32, 32), levels=2, steps=1, hidden_channels=4)
    return glow.initialize(torch.rand(8, 1, 32, 32)).eval()


def test_methods_include_csgm_when_the_dcgan_is_shipped(glow32, monkeypatch):
    generator = DCGANGenerator(DCGANConfig(latent_dim=8, features=4)).eval()
    loaded = []

    def fake_load(name):
        loaded.append(name)
        return generator

    monkeypatch.setattr("deepinv_glowprior.dcgan.load_pretrained_dcgan", fake_load)
    for task in ("cs", "denoising", "inpainting"):
        methods = experiments.default_methods(glow32, task)
        assert list(methods)[:2] == ["Glow", "CSGM"], task
        model = methods["CSGM"](None, None)
        assert isinstance(model, CSGMReconstructor) and model.generator is generator
        assert model.restarts == 10
    assert loaded == [experiments.DCGAN_NAME] * 3
    assert "CSGM" not in experiments.default_methods(glow32, "cs", dcgan=None)
    assert "Deep Decoder" not in experiments.default_methods(glow32, "cs")
    assert "Deep Decoder" in experiments.default_methods(glow32, "cs", deep_decoder=True)


def test_methods_leave_csgm_out_without_weights_or_at_another_size(glow32, monkeypatch):
    def missing(name):
        raise KeyError(f"Unknown DCGAN {name!r}")

    monkeypatch.setattr("deepinv_glowprior.dcgan.load_pretrained_dcgan", missing)
    assert "CSGM" not in experiments.default_methods(glow32, "cs")
    monkeypatch.undo()
    tiny = train_tiny_glow()  # 8x8 images: the 32x32 DCGAN cannot serve as its baseline
    assert "CSGM" not in experiments.default_methods(tiny, "cs")


def test_shipped_dcgan_is_wired_by_default(glow32):
    try:
        experiments.csgm_method(glow32, "cs")
    except Exception as err:  # pragma: no cover
        pytest.fail(f"csgm_method raised {err!r}")
    from deepinv_glowprior.dcgan import REGISTRY

    if experiments.DCGAN_NAME not in REGISTRY.read_text():
        pytest.skip("dcgan_mnist32 is not shipped in this checkout")
    assert "CSGM" in experiments.default_methods(glow32, "cs")


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, y, physics):
        return torch.full((y.shape[0], 1, 32, 32), self.value)


def _stub_slow_methods(monkeypatch, images: torch.Tensor) -> None:
    """Constant images for every method and ``images`` for every test set."""

    def stub_methods(glow, task, glow_settings=None, dcgan=experiments.DCGAN_NAME, **kwargs):
        methods = {"Glow": lambda p, v: _Constant(0.2)}
        if dcgan:
            methods["CSGM"] = lambda p, v: _Constant(0.1)
        return methods

    monkeypatch.setattr(experiments, "default_methods", stub_methods)
    monkeypatch.setattr(
        experiments, "_glow_method", lambda glow, gamma: lambda p, v: _Constant(0.3)
    )
    monkeypatch.setattr(experiments, "evaluation_images", lambda *a, **k: images)


def test_benchmark_reports_csgm_beside_glow(glow32, monkeypatch, tmp_path):
    """The cs experiment end to end on 2 images, with the slow methods replaced by stubs."""
    images = torch.rand(2, 1, 32, 32)
    _stub_slow_methods(monkeypatch, images)
    rows = experiments.cs_experiment(glow32, ratios=(0.2,), num_images=2, progress=False)
    assert [row["method"] for row in rows] == ["A^+ y", "Glow", "CSGM"]
    assert all(row["ratio"] == 0.2 and row["images"] == 2 for row in rows)
    galleries = {}
    rows = experiments.inpaint_experiment(
        glow32, gammas=(0.0,), num_images=2, progress=False, galleries=galleries
    )
    assert [row["method"] for row in rows] == ["A^+ y", "Glow gamma=0", "CSGM"]
    gallery = galleries["centre hole"]
    assert list(gallery) == ["truth", "A^+ y", "Glow gamma=0", "CSGM"]
    assert torch.equal(gallery["truth"], images)
    assert torch.equal(gallery["CSGM"], torch.full((2, 1, 32, 32), 0.1))
    assert experiments.save_grid(gallery, tmp_path / "grid.png").stat().st_size > 2000


@pytest.mark.parametrize(
    "name, options",
    [
        ("cs", {"datasets": ("mnist", "faces"), "ratios": (0.2, 0.5)}),
        ("cs", {"datasets": ("mnist",)}),  # the default ratios
        ("denoise", {"sigmas": (0.1, 0.2)}),
        ("inpaint", {}),
    ],
)
def test_grid_labels_are_the_settings_the_experiment_runs(glow32, monkeypatch, name, options):
    _stub_slow_methods(monkeypatch, torch.rand(1, 1, 32, 32))
    experiment = experiments.EXPERIMENTS[name]
    galleries = {}
    experiment(glow32, num_images=1, progress=False, galleries=galleries, **options)
    assert experiments.gallery_labels(experiment, options) == list(galleries)


def test_grid_labels_refuse_a_function_that_is_no_experiment():
    with pytest.raises(ValueError, match="experiment must be one of"):
        experiments.gallery_labels(claims_table, {})


def test_claims_command_reads_the_benchmark_csvs(tmp_path, capsys):
    experiments.write_csv(_cs_rows({0.1: 20.0, 0.2: 30.0}, LASSO), tmp_path / "cs.csv")
    ood = _cs_rows({0.2: 17.0}, LASSO, dataset="faces")
    experiments.write_csv(ood, tmp_path / "cs_fashion_mnist-faces.csv")
    assert main(["benchmark", "claims", "--out", str(tmp_path)]) == 0
    table = {row["claim"]: row for row in experiments.read_csv(tmp_path / "claims.csv")}
    assert table["1a"]["verdict"] == HOLDS
    assert table["2b"]["verdict"] == FAILS and "faces m/n=0.2" in table["2b"]["why"]
    assert "table:" in capsys.readouterr().out


def test_claims_command_without_csvs_is_a_user_error(tmp_path, capsys):
    assert main(["benchmark", "claims", "--out", str(tmp_path)]) == 2
    assert "run `glowprior benchmark cs" in capsys.readouterr().err


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.skipif(not (RESULTS / "claims.csv").is_file(), reason="no committed results")
def test_committed_claims_table_matches_the_committed_benchmark_csvs():
    """The docs' claims table is what claims_table makes of the committed CSVs, nothing else."""
    rows = experiments.read_results(RESULTS)
    assert {row["experiment"] for row in rows} == {"cs", "denoise", "inpaint", "bias"}
    assert experiments.read_csv(RESULTS / "claims.csv") == experiments.read_csv(
        experiments.write_csv(claims_table(rows), RESULTS.parent / "_build" / "claims_check.csv")
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["cs", "--datasets", "mnist,svhn"], "--datasets must be among"),
        (["denoise", "--ratios", "0.2"], "--ratios applies to the cs and bias benchmarks only"),
        (["bias", "--datasets", "mnist"], "--datasets applies to the cs benchmark only"),
        (["cs", "--sigmas", "0.1"], "--sigmas applies to the denoise benchmark only"),
        (["cs", "--ratios", "0.2,x"], "--ratios must be comma-separated numbers"),
        (
            ["cs", "--ratios", "0.2", "--grid", "faces m/n=0.2"],
            "--grid must be one of 'mnist m/n=0.2'",
        ),
    ],
)
def test_benchmark_option_errors_are_user_errors(args, message, capsys):
    assert main(["benchmark", *args]) == 2
    assert message in capsys.readouterr().err


def test_out_of_distribution_claims_read_each_model_on_its_own():
    rows = _cs_rows({0.2: 25.0, 0.5: 30.0}, LASSO, dataset="fashion_mnist")
    natural = _cs_rows({0.2: 20.0, 0.5: 17.0}, LASSO, dataset="faces")
    rows += [{"model": "natural32", **row} for row in natural]
    table = {r["claim"]: r for r in claims_table(rows)}
    natural_claim, digit_claim = table["2a"], table["2b"]
    assert natural_claim["verdict"] == FAILS
    assert "natural32 on faces m/n=0.2: Glow 20.0 vs Lasso-wavelet 18.0" in natural_claim["ours"]
    assert natural_claim["why"] == (
        "fails at natural32 on faces m/n=0.5: Glow 17.0 dB, Lasso-wavelet 18.0 dB"
    )
    assert digit_claim["verdict"] == HOLDS and "natural32" not in digit_claim["ours"]
    # the natural32 rows do not enter the in-distribution claims either
    assert table["1a"]["verdict"] == NOT_MEASURED


def test_evaluation_images_match_the_prior_channels():
    grey = experiments.evaluation_images("mnist", 2)
    colour = experiments.evaluation_images("mnist", 2, channels=3)
    assert grey.shape == (2, 1, 32, 32) and colour.shape == (2, 3, 32, 32)
    assert torch.equal(colour, grey.expand(-1, 3, -1, -1))
    assert experiments.evaluation_images("natural", 2, channels=3).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        experiments.evaluation_images("mnist", 2, channels=2)
