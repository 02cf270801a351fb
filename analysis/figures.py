"""Figure builders: the paper's Figures 1-6 and the extensions, from results datasets.

Every builder takes a results dataset (a store opened with ``pipeline.open_results``, or
``analysis._testing.simulate_points`` output) and an output directory, draws with matplotlib
(labeled axes, legends, theory lines), writes ``<name>.png`` and ``<name>.pdf`` and returns
the two paths. Figure 6 and the Hessian figure are computed from the dynamics themselves and
need no store.

Every store builder also takes ``tables``, the output of ``analysis.tables.analyze`` for the
same dataset: a builder that draws an estimator's result reads it from there instead of
fitting the estimator again (same default settings, so the same numbers); without it, or when
the table it needs is missing, the builder fits the estimator itself.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from pipeline.engine.activations import (  # noqa: E402
    dual_coefficients,
    get_activation,
    information_exponent,
)
from pipeline.engine.frames import equiangular_gram  # noqa: E402

from ._points import dual_c, iter_points  # noqa: E402
from .bifurcation import BifurcationPoint  # noqa: E402
from .coupon import CouponCollector  # noqa: E402
from .escape import EscapeScaling  # noqa: E402
from .hessian import hessian_spectrum  # noqa: E402
from .theory import (  # noqa: E402
    average_overlap,
    beta_c,
    coupon_failure_exact,
    coupon_limit,
    coupon_lower_bound,
    coupon_union_bound,
)


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


#: What ``analysis.tables.analyze`` returns: tables by name.
Tables = dict[str, pd.DataFrame]


def _have(tables: Tables | None, *keys: str) -> bool:
    return tables is not None and all(k in tables for k in keys)


def figure1(ds: xr.Dataset, out: Path, seed: int = 0, tables: Tables | None = None
            ) -> list[Path]:
    """Figure 1: overlaps during projected GD (n = 1, k = 2), one panel per p*."""
    pts = sorted(iter_points(ds), key=lambda item: item[0]["p_star"])
    fig, axes = plt.subplots(1, len(pts), figsize=(4.2 * len(pts), 3.4),
                             squeeze=False, layout="constrained")
    for ax, (params, sub) in zip(axes[0], pts, strict=True):
        lr = float(params.get("lr") or 1.0)
        it = sub["time"].values / lr
        u_t = sub["u_t"].isel(seed=seed, neuron=0).values  # (time, index)
        for j in range(u_t.shape[1]):
            ax.plot(np.maximum(it, 1), u_t[:, j], label=f"$w\\cdot v_{j + 1}$")
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("iteration")
        ax.set_ylabel("dot product")
        ax.set_title(f"$p^*={params['p_star']}$ ({params['teacher']}), d={params['d']}, "
                     f"lr={lr:g}")
        ax.legend(loc="upper left")
    fig.suptitle("Figure 1: projected GD, n = 1, k = 2")
    return _save(fig, out, "figure1")


def figure2(ds: xr.Dataset, out: Path, tables: Tables | None = None) -> list[Path]:
    """Figure 2: bifurcation diagram over beta (k = 2), final overlaps, beta_c and beta_f."""
    if _have(tables, "beta_f", "beta_f_fractions"):
        summary, fractions = tables["beta_f"], tables["beta_f_fractions"]
    else:
        est = BifurcationPoint().fit(ds)
        summary, fractions = est.summary_, est.fractions_
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for params, sub in iter_points(ds):
        u = sub["u"].values.reshape(-1, int(params["k"]))
        b = np.full(u.shape[0], params["beta"])
        ax.scatter(b, u.max(axis=1), s=6, color="C0", alpha=0.5)
        ax.scatter(b, u.min(axis=1), s=6, color="C1", alpha=0.5)
    betas = np.linspace(0, float(fractions["beta"].max()), 200)
    k = int(fractions["k"].iloc[0])
    ax.plot(betas, [average_overlap(k, b) for b in betas], "k:", lw=1,
            label=r"average point $\bar w\cdot v_j$")
    row = summary.iloc[0]
    ax.axvline(row["beta_c"], color="red", ls="--", label=rf"$\beta_c={row['beta_c']:.3f}$")
    if np.isfinite(row["beta_f_hi"]):
        ax.axvspan(row["beta_f_lo"], row["beta_f_hi"], color="green", alpha=0.2,
                   label=rf"$\beta_f\in({row['beta_f_lo']:.3f},{row['beta_f_hi']:.3f}]$")
    ax.scatter([], [], s=6, color="C0", label="largest overlap")
    ax.scatter([], [], s=6, color="C1", label="smallest overlap")
    ax.set_xlabel(r"$\beta$ (dot product of the index vectors)")
    ax.set_ylabel("overlap at convergence")
    ax.set_title(f"Figure 2: bifurcation, k = {k}, {row['teacher']}")
    ax.legend(fontsize=8)
    return _save(fig, out, "figure2")


def _trajectories(ax, sub: xr.Dataset, seed: int, title: str) -> None:
    u_t = sub["u_t"].isel(seed=seed).values  # (neuron, time, index)
    for i in range(u_t.shape[0]):
        ax.plot(u_t[i, :, 0], u_t[i, :, 1], lw=1)
        ax.plot(u_t[i, 0, 0], u_t[i, 0, 1], "k.", ms=3)
        ax.plot(u_t[i, -1, 0], u_t[i, -1, 1], "o", ms=4, mfc="none")
    ax.plot([1, 0], [0, 1], "k*", ms=10, label="index vectors")
    ax.set_xlabel(r"$w\cdot v_1$")
    ax.set_ylabel(r"$w\cdot v_2$")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_title(title)


def figure3(ds: xr.Dataset, out: Path, seed: int = 0, tables: Tables | None = None
            ) -> list[Path]:
    """Figure 3: same uncollected initialization, correlation vs MSE (k = 2, n = 10)."""
    pts = {p["loss"]: (p, sub) for p, sub in iter_points(ds)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), layout="constrained")
    for ax, loss in zip(axes, ("correlation", "mse"), strict=True):
        if loss in pts:
            p, sub = pts[loss]
            _trajectories(ax, sub, seed, f"{loss} loss ({p['teacher']}, n={p['n']})")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Figure 3: $v_2$ collected by no neuron at initialization")
    return _save(fig, out, "figure3")


def _loss_curve(params: dict, sub: xr.Dataset, seed: int) -> np.ndarray:
    # A store that mixes losses has loss_t for every point, NaN at the correlation ones.
    if params["loss"] == "mse":
        return sub["loss_t"].isel(seed=seed).values
    # Correlation loss of the network, -sum_i sum_j g(u_ij), from the snapshots.
    g = np.polynomial.polynomial.polyval
    return -g(sub["u_t"].isel(seed=seed).values, dual_c(params)).sum(axis=(0, 2))


def figure4(ds: xr.Dataset, out: Path, seed: int = 0, tables: Tables | None = None
            ) -> list[Path]:
    """Figure 4: trajectories and loss curves, correlation vs MSE, odd and even activation."""
    pts = sorted(iter_points(ds), key=lambda item: (item[0]["teacher"], item[0]["loss"]))
    teachers = sorted({p["teacher"] for p, _ in pts})
    fig, axes = plt.subplots(3, len(teachers), figsize=(4.6 * len(teachers), 12),
                             layout="constrained", squeeze=False)
    for col, teacher in enumerate(teachers):
        for params, sub in pts:
            if params["teacher"] != teacher:
                continue
            row = 0 if params["loss"] == "correlation" else 1
            _trajectories(axes[row, col], sub, seed, f"{params['loss']} loss, {teacher}")
            curve = _loss_curve(params, sub, seed)
            t = sub["time"].values
            ax = axes[2, col]
            shifted = curve - np.nanmin(curve) + 1e-12 if params["loss"] == "correlation" \
                else curve
            ax.plot(t, shifted, label=params["loss"])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("t")
            ax.set_ylabel("loss (correlation: minus its final value)")
            ax.set_title(f"loss curves, {teacher}")
            ax.legend()
    fig.suptitle("Figure 4: correlation vs MSE (k = 2, n = 10, d = 1000)")
    return _save(fig, out, "figure4")


def figure5(ds: xr.Dataset, out: Path, tables: Tables | None = None) -> list[Path]:
    """Figure 5: largest overlap at convergence against k, one panel per beta."""
    pts = list(iter_points(ds))
    betas = sorted({p["beta"] for p, _ in pts})
    fig, axes = plt.subplots(1, len(betas), figsize=(5 * len(betas), 3.8),
                             squeeze=False, layout="constrained")
    for ax, beta in zip(axes[0], betas, strict=True):
        rows = sorted((p["k"], sub["u"].max("index").values.ravel())
                      for p, sub in pts if p["beta"] == beta)
        ks = [k for k, _ in rows]
        ax.boxplot([v for _, v in rows], positions=ks, widths=0.6, showfliers=False)
        for k, v in rows:
            ax.scatter(np.full(v.size, k), v, s=4, alpha=0.3, color="C0")
        kk = np.arange(1, max(ks) + 1)
        ax.plot(kk, [average_overlap(k, beta) for k in kk], "k--", label="average point")
        ax.set_xlabel("k (number of index vectors)")
        ax.set_ylabel("max overlap at convergence")
        ax.set_title(rf"$\beta = {beta:g}$")
        ax.legend()
    fig.suptitle("Figure 5: bifurcation as k increases")
    return _save(fig, out, "figure5")


def figure6(out: Path, betas=(0.1, 0.2, 0.4), teacher: str = "h3") -> list[Path]:
    """Figure 6: phase portraits of the flow for d = k = 2 (computed from eq. 8, no store).

    Top: the reduced field in the overlap plane; for d = k = 2 the neuron lives on the
    boundary ellipse ``u^T A^-1 u = 1`` (bold, with the tangent flow as arrows), the interior
    is what d > k adds. Bottom: the loss along that circle, so the average point's change
    from a maximum to a minimum is visible.
    """
    a = get_activation(teacher).coefficients
    c = dual_coefficients(a, a)
    p = np.arange(len(c))
    p_star = information_exponent(c)

    def field(A, U):
        a_ = (c[1:, None, None] * p[1:, None, None] * U[None] ** (p[1:, None, None] - 1)).sum(0)
        return A @ a_ - (U * a_).sum(0) * U

    fig, axes = plt.subplots(2, len(betas), figsize=(4.4 * len(betas), 8),
                             layout="constrained", squeeze=False)
    for col, beta in enumerate(betas):
        ax, ax_loss = axes[0, col], axes[1, col]
        A = equiangular_gram(2, beta)
        L = np.linalg.cholesky(A)
        r, th = np.meshgrid(np.linspace(0.1, 0.9, 8), np.linspace(0, 2 * np.pi, 40))
        U = (L @ np.stack([(r * np.cos(th)).ravel(), (r * np.sin(th)).ravel()]))
        dU = field(A, U)
        ax.quiver(U[0], U[1], dU[0], dU[1], color="0.7", angles="xy", pivot="mid")
        theta = np.linspace(0, 2 * np.pi, 721)
        ring = L @ np.stack([np.cos(theta), np.sin(theta)])
        ax.plot(ring[0], ring[1], "k-", lw=2)
        sparse = ring[:, ::24]
        dR = field(A, sparse)
        ax.quiver(sparse[0], sparse[1], dR[0], dR[1], color="C0", angles="xy", pivot="mid",
                  scale=None, width=0.006)
        avg = average_overlap(2, beta)
        ax.plot([1, beta], [beta, 1], "ko", ms=7, label="index vectors")
        ax.plot([avg], [avg], "ro", ms=7, label=r"average $\bar w$")
        ax.set_aspect("equal")
        ax.set_xlabel(r"$u_1 = w\cdot v_1$")
        ax.set_ylabel(r"$u_2 = w\cdot v_2$")
        ax.set_title(rf"$\beta={beta:g}$ ($\beta_c = {beta_c(p_star, 2):.3f}$)")
        loss = -np.polynomial.polynomial.polyval(ring, c).sum(axis=0)
        # u = L w with V = L^T, whose first column is v_1 = e_1: theta is w's angle from v_1.
        angle = np.degrees(theta)
        ax_loss.plot(angle, loss, "k-")
        for target, style in (((1, beta), "ko"), ((beta, 1), "ko"), ((avg, avg), "ro")):
            idx = np.argmin(np.hypot(ring[0] - target[0], ring[1] - target[1]))
            ax_loss.plot(angle[idx], loss[idx], style, ms=7)
        ax_loss.set_xlabel(r"angle of $w$ from $v_1$ (degrees)")
        ax_loss.set_ylabel("correlation loss on the circle")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Figure 6: spherical gradient flow, d = k = 2, {teacher}")
    return _save(fig, out, "figure6")


def figure_escape(ds: xr.Dataset, out: Path, tables: Tables | None = None) -> list[Path]:
    """Escape time against d (log-log), one panel per frame (k, beta), with the fitted
    exponent and the theoretical slope for each teacher."""
    if _have(tables, "escape_summary", "escape_per_d"):
        summary, per_d = tables["escape_summary"], tables["escape_per_d"]
    else:
        est = EscapeScaling().fit(ds)
        summary, per_d = est.summary_, est.per_d_
    frames = sorted({(r["k"], r.get("beta", 0.0)) for _, r in summary.iterrows()})
    teachers = sorted(summary["teacher"].unique())
    fig, axes = plt.subplots(1, len(frames), figsize=(5 * len(frames), 4.6),
                             layout="constrained", squeeze=False, sharey=True)
    for ax, (k, beta) in zip(axes[0], frames, strict=True):
        for _, row in summary[(summary["k"] == k) & (summary["beta"] == beta)].iterrows():
            color = f"C{teachers.index(row['teacher'])}"
            grp = per_d[(per_d["teacher"] == row["teacher"]) & (per_d["k"] == k)
                        & (per_d["beta"] == beta)].sort_values("d")
            d = grp["d"].to_numpy(dtype=float)
            s = grp["statistic"].to_numpy()
            ax.errorbar(d, s, yerr=[s - grp["lo"], grp["hi"] - s], fmt="o", color=color,
                        label=f"{row['teacher']}: " + rf"$\alpha={row['alpha']:.3f}$ "
                              f"[{row['alpha_lo']:.3f}, {row['alpha_hi']:.3f}]")
            theory = row["theory_alpha"]
            if theory > 0:
                ax.plot(d, s[0] * (d / d[0]) ** theory, "--", color=color, lw=1)
            else:
                ax.plot(d, s[0] + row["log_slope"] * np.log(d / d[0]), "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_title(rf"k = {k}, $\beta$ = {beta:g}")
        ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("median escape time (95% bootstrap)")
    fig.suptitle(r"Theorem 2.1: escape time $\sim d^{p^*/2-1}$ ($\log d$ for $p^*=2$); "
                 "dashed: theory slopes")
    return _save(fig, out, "escape_time")


def figure_coupon(ds: xr.Dataset, out: Path, tables: Tables | None = None) -> list[Path]:
    """Coupon-collector failure against gamma = n/k, with the exact value and the bounds."""
    table = tables["coupon"] if _have(tables, "coupon") else CouponCollector().fit(ds).table_
    ks = sorted(table["k"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.6),
                             squeeze=False, layout="constrained")
    for ax, k in zip(axes[0], ks, strict=True):
        t = table[table["k"] == k].sort_values("gamma")
        g = t["gamma"].to_numpy()
        ax.errorbar(g, t["failure"], yerr=[t["failure"] - t["lo"], t["hi"] - t["failure"]],
                    fmt="o", label="measured (Wilson 95%)")
        gg = np.linspace(g.min(), g.max(), 100)
        nn = np.ceil(gg * k)
        ax.plot(gg, [coupon_failure_exact(n, k) for n in nn], "k-", label="exact")
        ax.plot(gg, [coupon_union_bound(n, k) for n in nn], "r--", label=r"$k e^{-n/k}$")
        ax.plot(gg, [coupon_lower_bound(n, k) for n in nn], "b--", label=r"$(1-1/k)^n$")
        ax.plot(gg, [coupon_limit(x) for x in gg], "g:", label=r"$e^{-\gamma}$")
        ax.set_yscale("log")
        ax.set_xlabel(r"$\gamma = n/k$")
        ax.set_ylabel("P(some index vector not learned)")
        ax.set_title(f"k = {k}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Coupon-collector failure at convergence")
    return _save(fig, out, "coupon")


def figure_beta_f(ds: xr.Dataset, out: Path, tables: Tables | None = None) -> list[Path]:
    """beta_f (grid interval) and beta_c against k, per p*."""
    s = tables["beta_f"] if _have(tables, "beta_f") else BifurcationPoint().fit(ds).summary_
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    for i, (p_star, grp) in enumerate(s.groupby("p_star")):
        grp = grp.sort_values("k")
        k = grp["k"].to_numpy()
        mid = 0.5 * (grp["beta_f_lo"] + grp["beta_f_hi"])
        ax.errorbar(k, mid, yerr=[mid - grp["beta_f_lo"], grp["beta_f_hi"] - mid], fmt="o",
                    color=f"C{i}", label=rf"$\beta_f$, $p^*={p_star}$")
        kk = np.linspace(k.min(), k.max(), 100)
        ax.plot(kk, (p_star - 2) / (kk + p_star - 2), "--", color=f"C{i}",
                label=rf"$\beta_c=(p^*-2)/(k+p^*-2)$, $p^*={p_star}$")
    ax.set_xlabel("k")
    ax.set_ylabel(r"$\beta$")
    ax.set_title(r"$\beta_f$ against $\beta_c$")
    ax.legend(fontsize=7)
    return _save(fig, out, "beta_f_vs_k")


def figure_hessian(out: Path, ks=(2, 3, 5, 10), teacher: str = "h3") -> list[Path]:
    """Smallest in-span Hessian eigenvalue at the average point against beta (computed)."""
    a = get_activation(teacher).coefficients
    c = dual_coefficients(a, a)
    p_star = information_exponent(c)
    betas = np.linspace(0, 0.9, 181)
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    for i, k in enumerate(ks):
        spec = hessian_spectrum(c, k, betas)
        ax.plot(spec["beta"], spec["in_span"], color=f"C{i}", label=f"k = {k}")
        ax.axvline(beta_c(p_star, k), color=f"C{i}", ls=":", lw=1)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel(r"smallest Hessian eigenvalue at $\bar w$ in span(V)")
    ax.set_title(rf"Saddle-to-minimum at $\beta_c$ (dotted), {teacher}")
    ax.legend()
    return _save(fig, out, "hessian")


__all__ = [
    "figure1", "figure2", "figure3", "figure4", "figure5", "figure6", "figure_beta_f",
    "figure_coupon", "figure_escape", "figure_hessian",
]
