"""Online SGD (engine/sgd.py): the reduced chain against explicit d-dim SGD and the flow.

Independent truths: the full-d backend draws explicit Gaussian samples in R^d and never uses
the reduction; the gradient flow is integrated by DOPRI5. The two backends run from
different root seeds, so their chains are independent and a two-sample KS test applies.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from pipeline.engine import sgd
from pipeline.engine.params import resolve_point
from pipeline.engine.simulate import simulate
from pipeline.errors import SpecError

STEPS = np.array([50, 200, 600])
CHAINS = 3000
#: Per-test level. Every test runs a fixed set of seeds, so it is deterministic; with about a
#: dozen KS tests per configuration a true law still passes with probability ~0.99.
ALPHA = 1e-3


def _chains(d, batch, teacher, beta, k, backend, root_seed, *, chains=CHAINS, lr_scale=1.0):
    point = dict(teacher=teacher, d=d, k=k, beta=beta, method="sgd", batch=batch,
                 lr={"scale": lr_scale, "d_power": -1.0}, backend=backend,
                 max_samples=int(STEPS[-1]) * batch, gtol=1e-12)
    return simulate(point, chains, root_seed=root_seed, snapshots=STEPS * batch)


def _ks_pvalues(a, b):
    """KS p-values of every overlap and of ||u|| at every snapshot, and of the escape step."""
    out = {}
    for i, steps in enumerate(STEPS):
        ua, ub = a.u_t.values[:, 0, i], b.u_t.values[:, 0, i]
        for j in range(ua.shape[1]):
            out[f"u{j}@{steps}"] = ks_2samp(ua[:, j], ub[:, j]).pvalue
        out[f"|u|@{steps}"] = ks_2samp(np.linalg.norm(ua, axis=1),
                                       np.linalg.norm(ub, axis=1)).pvalue
    never = np.inf  # chains that have not escaped within the budget: a censored value
    ea = np.nan_to_num(a.escape_samples.values.ravel(), nan=never)
    eb = np.nan_to_num(b.escape_samples.values.ravel(), nan=never)
    out["escape"] = ks_2samp(ea, eb).pvalue
    return out


FAST_CASES = [  # (d, B, teacher, beta, k): every d, both batches, h3/h4, both frames
    (8, 1, "h3", 0.0, 1),
    (40, 8, "h4", 0.3, 2),
    (200, 1, "h4", 0.0, 2),
]


@pytest.mark.parametrize("case", FAST_CASES)
def test_reduced_chain_matches_explicit_sgd(case):
    a = _chains(*case, "reduced", 0)
    b = _chains(*case, "full", 1)
    p = _ks_pvalues(a, b)
    assert min(p.values()) > ALPHA, p
    # The escape comparison must be about escapes, not only about censoring.
    if case[0] <= 40:
        assert np.isfinite(a.escape_samples.values).mean() > 0.5


def _mse_chains(d, batch, teacher, beta, backend, root_seed, *, k=2, chains=CHAINS,
                lr_scale=0.5):
    point = dict(teacher=teacher, d=d, k=k, n=3, beta=beta, loss="mse", method="sgd",
                 batch=batch, lr={"scale": lr_scale, "d_power": -1.0}, backend=backend,
                 max_samples=int(STEPS[-1]) * batch)
    return simulate(point, chains, root_seed=root_seed, snapshots=STEPS * batch)


def _ks_asymp(a, b):
    """The two-sample KS p-value by the asymptotic distribution."""
    return ks_2samp(a, b, method="asymp").pvalue


def _mse_ks_pvalues(a, b):
    """KS p-values of every neuron's overlaps and ||u|| at every snapshot, of the loss and
    of every neuron's escape step. Asymptotic p-values: with 1000 chains a side they are
    accurate, and scipy's exact method gives up on the escape steps' ties (inf for never)
    with a warning."""
    out = {}
    for i, steps in enumerate(STEPS):
        for neuron in range(3):
            ua, ub = a.u_t.values[:, neuron, i], b.u_t.values[:, neuron, i]
            for j in range(ua.shape[1]):
                out[f"u{neuron},{j}@{steps}"] = _ks_asymp(ua[:, j], ub[:, j])
            out[f"|u{neuron}|@{steps}"] = _ks_asymp(np.linalg.norm(ua, axis=1),
                                                    np.linalg.norm(ub, axis=1))
    out["loss"] = _ks_asymp(a.loss.values[:, 0], b.loss.values[:, 0])
    for neuron in range(3):
        ea = np.nan_to_num(a.escape_samples.values[:, neuron], nan=np.inf)
        eb = np.nan_to_num(b.escape_samples.values[:, neuron], nan=np.inf)
        out[f"escape{neuron}"] = _ks_asymp(ea, eb)
    return out


MSE_CASES = [  # (d, B, teacher, beta)
    (8, 8, "h3", 0.3),
    (40, 1, "h4", 0.0),
]


@pytest.mark.parametrize("case", MSE_CASES)
def test_coupled_mse_chain_matches_explicit_sgd(case):
    """n = 3 neurons of the MSE loss on shared samples: one coupled chain against explicit
    SGD in R^d. 37 KS tests per case, hence the Bonferroni level."""
    p = _mse_ks_pvalues(_mse_chains(*case, "reduced", 0), _mse_chains(*case, "full", 1))
    assert min(p.values()) > ALPHA / 4, p


def test_coupled_ks_has_power_against_wrong_bartlett_degrees(monkeypatch):
    """The MSE comparison fails when the batch's remainders live in d - k - m + 2 directions
    instead of d - k - m."""
    case = (8, 8, "h3", 0.3)
    b = _mse_chains(*case, "full", 1)
    kernel = sgd.coupled_chains

    def wrong_dk(*args):
        args = list(args)
        args[11] = args[11] + 2.0  # dk = d - k
        return kernel(*args)

    monkeypatch.setattr(sgd, "coupled_chains", wrong_dk)
    a = _mse_chains(*case, "reduced", 0)
    assert min(_mse_ks_pvalues(a, b).values()) < 1e-6


def test_coupled_chain_when_d_minus_k_is_below_n():
    """d - k = 2 < n = 3: the perp parts span 2 directions and no batch can add more."""
    case = (4, 8, "h3", 0.0)
    p = _mse_ks_pvalues(_mse_chains(*case, "reduced", 0, chains=1000),
                        _mse_chains(*case, "full", 1, chains=1000))
    assert min(p.values()) > ALPHA / 4, p


def test_coupled_mse_chain_converges_to_the_mse_flow():
    base = dict(teacher="h3", d=20, k=2, n=2, loss="mse", init="positive")
    t = np.array([0.5])
    flow = simulate({**base, "rtol": 1e-10, "gtol": 1e-8}, 50, snapshots=t).u_t.values
    err = []
    for lr in (1e-3, 1e-4, 1e-5):
        ds = simulate({**base, "method": "sgd", "lr": lr, "max_samples": int(t[-1] / lr) + 1},
                      50, snapshots=t / lr)
        err.append(np.sqrt(np.mean((ds.u_t.values - flow) ** 2)))
    assert err[0] > err[1] > err[2] and err[2] < min(0.1, err[0] / 4), err


def test_ks_has_power_against_wrong_chi_square(monkeypatch):
    """The same comparison fails for a chain whose remainder has d - 1 degrees of freedom
    instead of d - k - 1 (the error of forgetting that z already took k directions)."""
    case = (8, 1, "h3", 0.0, 1)
    b = _chains(*case, "full", 1)
    kernel = sgd.reduced_chains

    def wrong_df(*args):
        args = list(args)
        args[11] = args[11] + 1.0 + 2.0  # df of a chi-square over d - 1 + 2 coordinates
        return kernel(*args)

    monkeypatch.setattr(sgd, "reduced_chains", wrong_df)
    a = _chains(*case, "reduced", 0)
    assert min(_ks_pvalues(a, b).values()) < 1e-6


def test_converges_to_the_flow_as_lr_vanishes():
    """At t = lr x steps the chain approaches the flow from the same u(0), error ~ sqrt(lr)."""
    base = dict(teacher="h3", d=100, k=2, beta=0.2, init="positive")
    t = np.array([0.5, 1.0])
    flow = simulate({**base, "rtol": 1e-10, "gtol": 1e-8}, 100, snapshots=t).u_t.values
    lrs = np.array([1e-3, 1e-4, 1e-5])
    err = []
    for lr in lrs:
        ds = simulate({**base, "method": "sgd", "lr": float(lr), "gtol": 1e-12,
                       "max_samples": int(t[-1] / lr) + 1}, 100, snapshots=t / lr)
        assert np.array_equal(ds.u0.values, simulate({**base}, 100).u0.values)
        err.append(np.sqrt(np.mean((ds.u_t.values - flow) ** 2)))
    slope = np.polyfit(np.log(lrs), np.log(err), 1)[0]
    assert err[-1] < 0.05 and slope > 0.4, (err, slope)


def test_bit_identical_whatever_the_batch_of_seeds_or_threads():
    point = dict(teacher="h4", d=10**12, k=3, beta=0.1, method="sgd", lr=0.3, batch=4,
                 max_samples=4000)
    whole = simulate(point, range(6), threads=1)
    part = simulate(point, [4, 1], threads=2)
    for name in ("u", "escape_samples", "steps", "status"):
        np.testing.assert_array_equal(whole[name].sel(seed=[4, 1]).values, part[name].values)
    # The initial conditions are those of the flow point with the same initial law.
    flow = simulate({**point, "method": "flow", "lr": None}, range(6))
    np.testing.assert_array_equal(whole.u0.values, flow.u0.values)


def test_coupled_chain_bit_identical_and_starts_where_the_mse_flow_starts():
    point = dict(teacher="h3", d=10**9, k=2, n=3, loss="mse", method="sgd", lr=0.01,
                 batch=4, max_samples=800)
    whole = simulate(point, range(5), threads=1)
    part = simulate(point, [3, 0], threads=2)
    for name in ("u", "q", "escape_samples", "loss"):
        np.testing.assert_array_equal(whole[name].sel(seed=[3, 0]).values, part[name].values)
    flow = simulate({**point, "method": "flow", "lr": None, "t_max": 1e-9}, range(5))
    np.testing.assert_array_equal(whole.u0.values, flow.u0.values)
    np.testing.assert_allclose(np.diagonal(whole.q.values, axis1=1, axis2=2), 1.0, atol=1e-12)


def test_escape_units_and_status():
    ds = simulate(dict(teacher="h3", d=50, k=1, method="sgd", lr=0.02, batch=3,
                       max_samples=30_000, gtol=1e-2), 20)
    esc = ds.escape_samples.values
    assert np.all(np.isnan(ds.escape_time.values))  # never a time for an SGD point
    assert np.all(np.isnan(esc) | (esc % 3 == 0))  # samples: whole batches
    status = ds.status.values
    assert set(np.unique(status)) <= {0, 1}
    assert np.all(ds.steps.values[status == 1] * 3 >= 30_000)
    np.testing.assert_allclose(ds.t_final.values, 0.02 * ds.steps.values)


def test_power_law_lr_resolves_per_d_and_hashes():
    law = {"scale": 0.5, "d_power": -1.5}
    p = resolve_point(dict(teacher="h3", d=100, k=1, method="sgd", lr=law))
    assert p.lr == pytest.approx(0.5 * 100**-1.5)
    q = resolve_point(dict(teacher="h3", d=100, k=1, method="sgd", lr=0.5 * 100**-1.5))
    assert p.lr == q.lr and p.canonical()["lr_law"] == law  # the law groups points over d
    assert "batch" in p.canonical() and "t_max" not in p.canonical()
    flow = resolve_point(dict(teacher="h3", d=100, k=1))
    assert "batch" not in flow.canonical()  # flow and GD hashes are unchanged by SGD


@pytest.mark.parametrize("bad, field", [
    (dict(method="sgd"), "lr"),
    (dict(method="sgd", lr={"scale": 0.1}), "lr"),
    (dict(method="sgd", lr={"scale": -1, "d_power": 0}), "lr.scale"),
    (dict(method="sgd", lr=0.1, batch=0), "batch"),
])
def test_sgd_spec_errors(bad, field):
    with pytest.raises(SpecError) as err:
        resolve_point(dict(teacher="h3", d=100, k=1, **bad))
    assert err.value.field == field


@pytest.mark.slow
@pytest.mark.parametrize("d", [8, 40, 200])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("teacher", ["h3", "h4"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_reduced_chain_matches_explicit_sgd_grid(d, batch, teacher, beta):
    case = (d, batch, teacher, beta, 2)
    p = _ks_pvalues(_chains(*case, "reduced", 0), _chains(*case, "full", 1))
    assert min(p.values()) > ALPHA / 24, p  # 24 configurations


@pytest.mark.slow
@pytest.mark.parametrize("d", [8, 40, 200])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("teacher", ["h3", "h4"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_coupled_mse_chain_matches_explicit_sgd_grid(d, batch, teacher, beta):
    case = (d, batch, teacher, beta)
    p = _mse_ks_pvalues(_mse_chains(*case, "reduced", 0), _mse_chains(*case, "full", 1))
    assert min(p.values()) > ALPHA / 24 / 4, p


def test_coupled_chain_with_correlation_factors_matches_the_single_neuron_chain():
    """The coupled chain's machinery (Bartlett remainders, QR compression) at n = 1 with the
    correlation factors is the single-neuron chain: same law of u after 600 steps."""
    from pipeline.engine.activations import get_activation
    from pipeline.engine.frames import equiangular_gram
    from pipeline.engine.initial import sample_initial_batch
    from pipeline.engine.seeding import seed_rngs

    d, k, batch, chains = 40, 2, 8, 10_000  # both chains are cheap: a sharper test
    A = equiangular_gram(k, 0.3)
    a = get_activation("h4").coefficients
    seeds = np.arange(chains)
    draw = sample_initial_batch(seed_rngs(5, "00ff", seeds), 1, d, A, "uniform")
    U = np.ascontiguousarray(draw.u)
    Z = np.ascontiguousarray(draw.r[:, :, None])
    snaps = np.array([600])
    u_t = np.full((chains, 1, 1, k), np.nan)
    sgd.coupled_chains(U, Z, 1, sgd.chain_states(5, "00ff", seeds, 1), np.linalg.cholesky(A),
                       np.linalg.inv(A), sgd._trim(sgd.he_coefficients(a)),
                       sgd._trim(sgd.he_coefficients(sgd.derivative_coefficients(a))),
                       sgd._trim(sgd.he_coefficients(a)), 1.0 / d, batch, float(d - k), False,
                       0.5, 600, snaps, np.full((chains, 1), -1), np.zeros(chains, np.int64),
                       np.zeros(chains, np.int8), u_t, np.zeros(chains, np.int64))
    ref = _chains(d, batch, "h4", 0.3, k, "reduced", 0, chains=chains)
    for j in range(k):
        assert ks_2samp(u_t[:, 0, 0, j], ref.u_t.values[:, 0, -1, j]).pvalue > ALPHA
