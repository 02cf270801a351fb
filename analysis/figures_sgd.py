"""Figures of online SGD (beyond the paper), beside the gradient flow.

* :func:`figure_sample_complexity`: samples to escape against d for each p*, and the same
  escapes in flow-equivalent time ``lr x steps`` beside the gradient flow's escape times
  from the same initial conditions;
* :func:`figure_lr_to_flow`: SGD trajectories approaching the flow as ``lr -> 0`` at
  ``t = lr x steps``, and the RMS distance to the flow against ``lr``.

The flow references are simulated here from the SGD points' own parameters (same initial
law, so the same ``u(0)`` seed by seed): a few hundred flow trajectories, seconds at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

import pipeline  # noqa: E402

from ._points import iter_points  # noqa: E402
from .escape import SampleComplexity  # noqa: E402
from .figures import Tables, _have, _save  # noqa: E402

#: The parameters that fix a point's model and initial law (hence u(0) seed by seed).
_INITIAL = ("loss", "teacher", "student", "d", "k", "n", "init", "degree",
            "escape_threshold")


def flow_counterpart(params: dict, **observe) -> dict:
    """The gradient-flow point with the same model and initial law as an SGD point."""
    point = {name: params[name] for name in _INITIAL}
    if isinstance(params.get("gram"), str):
        point["gram"] = json.loads(params["gram"])
    else:
        point["beta"] = params.get("beta")
    return {**point, "method": "flow", "rtol": 1e-9, "gtol": 1e-5, **observe}


def figure_sample_complexity(ds: xr.Dataset, out: Path, tables: Tables | None = None
                             ) -> list[Path]:
    """Median samples to escape against d (log-log) per p*, with the theory slopes; beside
    it, SGD's escape in flow-equivalent time ``lr x steps`` and the flow's escape time."""
    if _have(tables, "samples_summary", "samples_per_d"):
        summary, per_d = tables["samples_summary"], tables["samples_per_d"]
    else:
        est = SampleComplexity().fit(ds)
        summary, per_d = est.summary_, est.per_d_
    fig, (ax_n, ax_t) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    teachers = sorted(per_d["teacher"].unique())
    fits = {r["teacher"]: r for _, r in summary.iterrows()} if len(summary) else {}
    times = []
    for params, sub in iter_points(ds):
        flow = pipeline.simulate(flow_counterpart(params),
                                 np.asarray(sub["seed"].values, dtype=int))
        times.append({"teacher": params["teacher"], "d": params["d"],
                      "sgd": float(np.nanmedian(sub["escape_samples"].values))
                      * params["lr"] / params["batch"],
                      "flow": float(np.nanmedian(flow["escape_time"].values))})
    times = pd.DataFrame(times)
    for i, teacher in enumerate(teachers):
        color = f"C{i}"
        grp = per_d[per_d["teacher"] == teacher].sort_values("d")
        d = grp["d"].to_numpy(dtype=float)
        s = grp["statistic"].to_numpy()
        row = fits.get(teacher)
        label = teacher if row is None else (
            f"{teacher}: " + rf"$\alpha={row['alpha']:.2f}$ [{row['alpha_lo']:.2f}, "
            f"{row['alpha_hi']:.2f}], theory {row['law']}")
        ax_n.errorbar(d, s, yerr=[s - grp["lo"], grp["hi"] - s], fmt="o", color=color,
                      label=label)
        p_star = int(grp["p_star"].iloc[0])
        law = d * np.log(d) if p_star == 2 else d ** (p_star - 1.0)
        ax_n.plot(d, s[0] * law / law[0], "--", color=color, lw=1)
        tg = times[times["teacher"] == teacher].sort_values("d")
        ax_t.plot(tg["d"], tg["flow"], "o-", color=color, label=f"{teacher}: flow")
        ax_t.plot(tg["d"], tg["sgd"], "s:", mfc="none", color=color,
                  label=f"{teacher}: SGD, lr x steps")
    for ax in (ax_n, ax_t):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.legend(fontsize=7, loc="upper left")
    ax_n.set_ylabel("median samples to escape (95% bootstrap)")
    ax_n.set_title(r"online SGD at lr $= c\,d^{-p^*/2}$: $n \sim d^{p^*-1}$ (dashed)")
    ax_t.set_ylabel("median escape time")
    ax_t.set_title(r"flow escape time $\sim d^{p^*/2-1}$ and SGD's lr $\times$ steps")
    return _save(fig, out, "sgd_sample_complexity")


def lr_errors(ds: xr.Dataset) -> list[dict]:
    """Per SGD point: lr, the flow-equivalent times, its snapshots and the flow's (same
    seeds, same ``u(0)``), and the RMS distance to the flow at each time."""
    rows = []
    for params, sub in iter_points(ds):
        samples = np.asarray(sub["time"].values, dtype=float)
        t = params["lr"] * np.floor(samples / params["batch"])
        u_sgd = np.asarray(sub["u_t"].values, dtype=float)[:, 0]  # (seed, time, k)
        # Distinct positive times within the chain's budget (NaN beyond it).
        keep = np.concatenate([[True], np.diff(t) > 0]) & (t > 0) \
            & np.isfinite(u_sgd).all(axis=(0, 2))
        t, u_sgd = t[keep], u_sgd[:, keep]
        flow = pipeline.simulate(flow_counterpart(params, rtol=1e-10, gtol=1e-9),
                                 np.asarray(sub["seed"].values, dtype=int), snapshots=t)
        u_flow = np.asarray(flow["u_t"].values, dtype=float)[:, 0]
        rms = np.sqrt(np.nanmean((u_sgd - u_flow) ** 2, axis=(0, 2)))
        rows.append({"lr": params["lr"], "t": t, "u_sgd": u_sgd, "u_flow": u_flow, "rms": rms})
    return sorted(rows, key=lambda r: -r["lr"])


def figure_lr_to_flow(ds: xr.Dataset, out: Path, tables: Tables | None = None,
                      seed: int = 0) -> list[Path]:
    """One seed's overlaps under SGD for each lr beside the flow, against t = lr x steps;
    and the RMS distance to the flow (over seeds) against lr, with a sqrt(lr) guide."""
    rows = lr_errors(ds)
    fig, (ax_u, ax_e) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for i, row in enumerate(rows):
        for j in range(row["u_sgd"].shape[-1]):
            ax_u.plot(row["t"], row["u_sgd"][seed, :, j], color=f"C{i}", lw=1,
                      label=f"SGD lr = {row['lr']:g}" if j == 0 else None)
    last = rows[-1]
    for j in range(last["u_flow"].shape[-1]):
        ax_u.plot(last["t"], last["u_flow"][seed, :, j], "k--", lw=1.2,
                  label="gradient flow" if j == 0 else None)
    ax_u.set_xscale("log")
    ax_u.set_xlabel(r"t = lr $\times$ steps")
    ax_u.set_ylabel(r"overlaps $u_j$")
    ax_u.set_title(f"seed {seed}")
    ax_u.legend(fontsize=8)
    lrs = np.array([r["lr"] for r in rows])
    t_end = min(r["t"][-1] for r in rows)
    for i, t_at in enumerate(t for t in (0.5, 1.0, 2.0, 4.0) if t <= t_end):
        err = np.array([np.interp(np.log(t_at), np.log(r["t"]), r["rms"]) for r in rows])
        ax_e.loglog(lrs, err, "o-", color=f"C{i}", label=f"t = {t_at:g}")
        ax_e.loglog(lrs, err[-1] * np.sqrt(lrs / lrs[-1]), ":", color=f"C{i}", lw=1)
    ax_e.set_title(r"RMS distance to the flow over seeds; dotted: $\sqrt{lr}$")
    ax_e.set_xlabel("lr")
    ax_e.set_ylabel(r"RMS of $u_{SGD} - u_{flow}$")
    ax_e.legend(fontsize=8)
    fig.suptitle("Online SGD approaches the gradient flow as lr -> 0")
    return _save(fig, out, "sgd_lr_to_flow")


__all__ = ["figure_lr_to_flow", "figure_sample_complexity", "flow_counterpart", "lr_errors"]
