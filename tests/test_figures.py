"""Every figure builder writes a non-empty PNG and PDF from a small dataset."""

from __future__ import annotations

import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest

from analysis import figures as F
from analysis._testing import simulate_points


def _check(paths):
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    assert pdf.stat().st_size > 1000 and pdf.read_bytes()[:4] == b"%PDF"
    img = mpimg.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 100
    # Not a blank canvas: a real drawing has many distinct pixel values.
    assert np.unique(img.reshape(-1, img.shape[-1]), axis=0).shape[0] > 20


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_figure1(tmp_path):
    ds = simulate_points([{"teacher": f"h{p}", "d": 200, "k": 2, "method": "gd", "lr": 0.1,
                           "init": "positive"} for p in (2, 3, 4)], 1,
                         snapshots=np.logspace(-1, 4, 40))
    _check(F.figure1(ds, tmp_path))


def test_figure2_and_beta_f(tmp_path):
    pts = [{"teacher": f"h{p}", "d": 200, "k": k, "beta": float(b), "init": "positive"}
           for p in (3, 4) for k in (2, 3) for b in np.linspace(0.1, 0.7, 7)]
    ds = simulate_points(pts, 4)
    _check(F.figure_beta_f(ds, tmp_path))
    two = simulate_points([p for p in pts if p["k"] == 2 and p["teacher"] == "h3"], 4)
    _check(F.figure2(two, tmp_path))


def test_figure3_and_figure4(tmp_path):
    ds = simulate_points([{"teacher": t, "d": 200, "k": 2, "n": 4, "init": "uncollected"}
                          for t in ("h3", "h4")], 1, snapshots=True)
    _check(F.figure4(ds, tmp_path))
    _check(F.figure3(ds.isel(point=[0]), tmp_path))


def test_figure5(tmp_path):
    ds = simulate_points([{"teacher": "h3", "d": 200, "k": k, "beta": b, "init": "positive"}
                          for b in (0.2, 0.3) for k in (1, 2, 4, 8)], 4)
    _check(F.figure5(ds, tmp_path))


def test_figure6_and_hessian(tmp_path):
    _check(F.figure6(tmp_path))
    _check(F.figure_hessian(tmp_path))


def test_escape_and_coupon_figures(tmp_path):
    ds = simulate_points([{"teacher": t, "d": int(d), "k": 2, "init": "positive"}
                          for t in ("h3", "h4") for d in (1e3, 1e4, 1e5)], 16)
    _check(F.figure_escape(ds, tmp_path))
    ds = simulate_points([{"teacher": "h3", "d": 100, "k": k, "n": n, "init": "positive"}
                          for k in (2, 4) for n in (2, 4, 8)], 16)
    _check(F.figure_coupon(ds, tmp_path))
