"""Tests of the dataset-bias experiment: digit groups, rows, figures, claim 5 and the CLI."""

from __future__ import annotations

import pytest
import torch

from deepinv_glowprior import Glow, bias
from deepinv_glowprior.cli import main
from deepinv_glowprior.data import mnist
from deepinv_glowprior.dcgan import DCGANConfig, DCGANGenerator
from deepinv_glowprior.experiments import FAILS, HOLDS, NOT_MEASURED, claims_table

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_priors() -> list[bias.BiasPrior]:
    torch.manual_seed(0)
    glow = Glow((1, 32, 32), levels=2, steps=1, hidden_channels=8)
    glow.initialize(bias.bias_images((7,), 4)["seen"]).eval()
    generator = DCGANGenerator(DCGANConfig((1, 32, 32), latent_dim=8, features=4)).eval()
    return [
        bias.BiasPrior("Glow", "without 7", glow, {"max_iter": 30}),
        bias.BiasPrior("CSGM", "without 7", generator, {"max_iter": 30}),
    ]


@pytest.fixture(scope="module")
def result(small_priors) -> bias.BiasResult:
    return bias.bias_experiment(
        small_priors, (7,), ratios=(0.5,), num_images=2, restarts=2, progress=False
    )


def test_groups_hold_left_out_and_seen_digits():
    images = bias.bias_images((7, 1), 3)
    test = mnist("test")
    labels = test.labels.tolist() if hasattr(test.labels, "tolist") else list(test.labels)
    sevens_and_ones = [i for i, label in enumerate(labels) if label in (7, 1)][:3]
    others = [i for i, label in enumerate(labels) if label not in (7, 1)][:3]
    assert torch.equal(images["left out"], torch.stack([test[i] for i in sevens_and_ones]))
    assert torch.equal(images["seen"], torch.stack([test[i] for i in others]))


@pytest.mark.parametrize(("left_out", "count"), [((), 2), ((10,), 2), (("7",), 2), ((7,), 0)])
def test_bad_groups_are_refused(left_out, count):
    with pytest.raises(ValueError, match="left_out|count"):
        bias.bias_images(left_out, count)


def test_priors_must_be_bias_priors(small_priors):
    with pytest.raises(TypeError, match="BiasPrior"):
        bias.bias_experiment([], progress=False)
    with pytest.raises(TypeError, match="BiasPrior"):
        bias.bias_experiment([small_priors[0].model], progress=False)


def test_a_prior_must_match_its_method(small_priors):
    with pytest.raises(TypeError, match="needs a DCGANGenerator"):
        bias.BiasPrior("CSGM", "x", small_priors[0].model)
    with pytest.raises(ValueError, match="'Glow' or 'CSGM'"):
        bias.BiasPrior("GAN", "x", small_priors[1].model)


def test_rows_cover_every_prior_group_and_task(result):
    keys = {(r["method"], r["digits"], r["task"], r["ratio"]) for r in result.rows}
    assert keys == {
        (method, digits, task, ratio)
        for method in ("Glow", "CSGM")
        for digits in ("left out 7", "seen")
        for task, ratio in (("projection", 1.0), ("cs", 0.5))
    }
    assert all(r["images"] == 2 and r["training"] == "without 7" for r in result.rows)
    for group in ("left out", "seen"):
        assert len(result.reconstructions[group]) == 4
        for x_hat in result.reconstructions[group].values():
            assert x_hat.shape == (2, 1, 32, 32)


def test_the_glow_projection_beats_a_tiny_gan(result):
    # An invertible model can fit any image; an 8-dimensional GAN cannot.
    psnr = {(r["method"], r["digits"]): r["psnr"] for r in result.rows if r["task"] == "projection"}
    for digits in ("left out 7", "seen"):
        assert psnr[("Glow", digits)] > psnr[("CSGM", digits)] + 3


def test_figures_are_written(result, tmp_path):
    plot = bias.plot_bias(result.rows, tmp_path / "bias.png")
    grid = bias.save_bias_grid(result, tmp_path / "grid.png")
    assert plot.stat().st_size > 5000 and grid.stat().st_size > 2000


def _bias_rows(glow: dict, csgm: dict, seen_ceiling: float = 30.0) -> list[dict]:
    rows = [
        {
            "experiment": "bias",
            "training": "without 7",
            "digits": "seen",
            "task": "projection",
            "ratio": 1.0,
            "method": "CSGM",
            "psnr": seen_ceiling,
        }
    ]
    for method, values in (("Glow", glow), ("CSGM", csgm)):
        for (task, ratio), value in values.items():
            rows.append(
                {
                    "experiment": "bias",
                    "training": "without 7",
                    "digits": "left out 7",
                    "task": task,
                    "ratio": ratio,
                    "method": method,
                    "psnr": value,
                }
            )
    return rows


def test_claim_5_verdicts():
    glow = {("projection", 1.0): 60.0, ("cs", 0.1): 15.0, ("cs", 0.5): 35.0}
    csgm = {("projection", 1.0): 18.0, ("cs", 0.1): 17.0, ("cs", 0.5): 17.5}
    row = {r["claim"]: r for r in claims_table(_bias_rows(glow, csgm))}["5"]
    assert row["verdict"] == HOLDS  # m/n = 0.1 lies outside the claim
    assert "CSGM ceiling on seen digits 30.0, on left out 7 18.0" in row["ours"]
    csgm[("cs", 0.5)] = 36.0
    row = {r["claim"]: r for r in claims_table(_bias_rows(glow, csgm))}["5"]
    assert row["verdict"] == FAILS and "m/n=0.5" in row["why"]
    assert {r["claim"]: r for r in claims_table([])}["5"]["verdict"] == NOT_MEASURED


def test_the_cli_names_missing_bias_models(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(bias.BIASED_MODELS, "glow", "no_such_model")
    code = main(["benchmark", "bias", "--out", str(tmp_path), "--no-progress"])
    assert code != 0
    assert "no_such_model" in capsys.readouterr().err
