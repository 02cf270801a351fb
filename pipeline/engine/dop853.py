"""Dormand & Prince's explicit Runge-Kutta method of order 8 (DOP853: 12 stages, error
estimators of orders 5 and 3, dense output of order 7 from 3 more stages), for the non-stiff
stretches of the coupled (MSE) stage (``stiff.py``).

Why order 8 there. The stage's explicit steps go into escapes: an overlap that leaves a saddle
grows like u ~ 1 / (T* - t), and any method at fixed rtol needs a fixed number of steps per
e-fold of the time to blow-up T* - t, of which there are ~ ln sqrt(d) per escape. Order 8
needs ~3x fewer steps per e-fold than Dormand-Prince 5(4) at rtol 1e-8 (scipy's solve_ivp on
du/dt = 6 u^2 from 1e-6 to 0.5: 60 against 185 steps) for about the same number of field
evaluations; the steps of the stage then grow less with d.

The tableau is Hairer's (``dop853.f``), as scipy ships it
(``scipy.integrate._ivp.dop853_coefficients``; ``tests/test_dop853.py`` checks the copy
below against it and the order of the method on a problem with a closed form). The error
norm, the step-size controller and the stiffness test are those of Hairer's code; the dense
output is scipy's form of it. Plain arithmetic (no fast-math flags): results are a fixed
function of the inputs.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit as njit
from .dynamics import vector_field

N_STAGES = 12
#: Rows of the stage array: 12 stages, the velocity at the new state, 3 for dense output.
N_ROWS = 16
#: Hairer's stiffness test: h |lambda| from the last two evaluations beyond this (DOP853's
#: stability boundary on the negative real axis is ~6) counts as a stability-limited step.
STIFF_HLAMBDA = 6.1
#: Step-size controller (Hairer: safety 0.9, new step between h / 3 and 6 h, exponent 1/8).
SAFE, FAC_LO, FAC_HI, EXPO = 0.9, 1.0 / 3.0, 6.0, 1.0 / 8.0

A = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.05260015195876773, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0],
    [0.0197250569845379, 0.0591751709536137, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0],
    [0.02958758547680685, 0.0, 0.08876275643042054, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0],
    [0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242, 0.0, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125, 0.0, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328,
     -0.015319437748624402, 0.008273789163814023, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726,
     27.59209969944671, 20.154067550477894, -43.48988418106996, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
     0.0, 0.0],
    [0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843,
     21.230051448181193, 15.279233632882423, -33.28821096898486, -0.020331201708508627, 0.0,
     0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295,
     -8.149787010746927, -18.52006565999696, 22.739487099350505, 2.4936055526796523,
     -3.0467644718982196, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188,
     27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303,
     0.6433927460157636, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
     -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034,
     0.04471061572777259, 0.0, 0.0, 0.0, 0.0],
    [0.056167502283047954, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25350021021662483, -0.2462390374708025,
     -0.12419142326381637, 0.15329179827876568, 0.00820105229563469, 0.007567897660545699,
     -0.008298, 0.0, 0.0, 0.0],
    [0.03183464816350214, 0.0, 0.0, 0.0, 0.0, 0.028300909672366776, 0.053541988307438566,
     -0.05492374857139099, 0.0, 0.0, -0.00010834732869724932, 0.0003825710908356584,
     -0.00034046500868740456, 0.1413124436746325, 0.0, 0.0],
    [-0.42889630158379194, 0.0, 0.0, 0.0, 0.0, -4.697621415361164, 7.683421196062599,
     4.06898981839711, 0.3567271874552811, 0.0, 0.0, 0.0, -0.0013990241651590145,
     2.9475147891527724, -9.15095847217987, 0.0],
])
B = np.array([
    0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
    -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034,
    0.04471061572777259
])
C = np.array([
    0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274, 0.2816496580927726,
    0.3333333333333333, 0.25, 0.3076923076923077, 0.6512820512820513, 0.6, 0.8571428571428571,
    1.0, 1.0, 0.1, 0.2, 0.7777777777777778
])
E3 = np.array([
    -0.18980075407240762, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
    -5.801203960010585, -0.4226823213237919, -0.1521609496625161, 0.20136540080403034,
    0.02265179219836082, 0.0
])
E5 = np.array([
    0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502,
    1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571,
    -0.022355307863886294, 0.0
])
D = np.array([
    [-8.428938276109013, 0.0, 0.0, 0.0, 0.0, 0.5667149535193777, -3.0689499459498917,
     2.38466765651207, 2.117034582445028, -0.871391583777973, 2.2404374302607883,
     0.6315787787694688, -0.08899033645133331, 18.148505520854727, -9.194632392478356,
     -4.436036387594894],
    [10.427508642579134, 0.0, 0.0, 0.0, 0.0, 242.28349177525817, 165.20045171727028,
     -374.5467547226902, -22.113666853125306, 7.733432668472264, -30.674084731089398,
     -9.332130526430229, 15.697238121770845, -31.139403219565178, -9.35292435884448,
     35.81684148639408],
    [19.985053242002433, 0.0, 0.0, 0.0, 0.0, -387.0373087493518, -189.17813819516758,
     527.8081592054236, -11.57390253995963, 6.8812326946963, -1.0006050966910838,
     0.7777137798053443, -2.778205752353508, -60.19669523126412, 84.32040550667716,
     11.99229113618279],
    [-25.69393346270375, 0.0, 0.0, 0.0, 0.0, -154.18974869023643, -231.5293791760455,
     357.6391179106141, 93.40532418362432, -37.45832313645163, 104.0996495089623,
     29.8402934266605, -43.53345659001114, 96.32455395918828, -39.17726167561544,
     -149.72683625798564],
])


@njit
def _stages(model, y, h, args, work, K, ys, first, last):
    """Stages ``first .. last - 1``: ``K[s] = f(y + h sum_{j < s} A[s, j] K[j])``."""
    for s in range(first, last):
        for i in range(y.size):
            acc = 0.0
            for j in range(s):
                acc += A[s, j] * K[j, i]
            ys[i] = y[i] + h * acc
        vector_field(model, ys, args, work, K[s])


@njit
def step(model, y, h, args, work, K, ys, yn):
    """One step of length ``h`` from ``y`` with ``K[0]`` its velocity: stages to
    ``K[1:12]``, the new state to ``yn``, its velocity to ``K[12]``; ``ys`` is left at the
    last stage's argument (for :func:`stiffness`)."""
    N = y.size
    _stages(model, y, h, args, work, K, ys, 1, N_STAGES)
    for i in range(N):
        acc = 0.0
        for j in range(N_STAGES):
            acc += B[j] * K[j, i]
        yn[i] = y[i] + h * acc
    vector_field(model, yn, args, work, K[N_STAGES])


@njit(inline="always")
def _estimate(E, K, i):
    """Coordinate ``i`` of an embedded error estimate (per unit step): ``sum_j E[j] K[j, i]``
    over the stages and the new state's slope."""
    acc = 0.0
    for j in range(N_STAGES + 1):
        acc += E[j] * K[j, i]
    return acc


@njit
def error_norm(K, h, y, yn, atol, rtol):
    """Hairer's error norm of the step (<= 1: accepted): the order-5 estimate, softened by
    the order-3 one where that is much larger; ``atol`` per coordinate."""
    e5 = 0.0
    e3 = 0.0
    for i in range(y.size):
        sk = atol[i] + rtol * max(abs(y[i]), abs(yn[i]))
        e5 += (_estimate(E5, K, i) / sk) ** 2
        e3 += (_estimate(E3, K, i) / sk) ** 2
    if e5 == 0.0 and e3 == 0.0:
        return 0.0
    return abs(h) * e5 / math.sqrt((e5 + 0.01 * e3) * y.size)


@njit
def add_error(K, h, acc):
    """Add the step's order-5 error estimate, per coordinate and in magnitude, to ``acc``."""
    for i in range(acc.size):
        acc[i] += abs(h * _estimate(E5, K, i))


@njit
def factor(err):
    """``h_new = h / factor(err)`` after an accepted step."""
    return max(1.0 / FAC_HI, min(1.0 / FAC_LO, err ** EXPO / SAFE))


@njit
def stiffness(K, ys, yn, h):
    """``h |lambda|`` estimated from the last stage and the new state (Hairer)."""
    num = 0.0
    den = 0.0
    for i in range(yn.size):
        num += (K[N_STAGES, i] - K[N_STAGES - 1, i]) ** 2
        den += (yn[i] - ys[i]) ** 2
    return h * math.sqrt(num / den) if den > 0.0 else 0.0


@njit
def dense_prepare(model, y, yn, h, args, work, K, ys, F):
    """The 3 extra stages and the 7 rows ``F`` of the dense output of the step
    ``y -> yn`` (``K`` as :func:`step` left it)."""
    N = y.size
    _stages(model, y, h, args, work, K, ys, N_STAGES + 1, N_ROWS)
    for i in range(N):
        dy = yn[i] - y[i]
        F[0, i] = dy
        F[1, i] = h * K[0, i] - dy
        F[2, i] = 2.0 * dy - h * (K[N_STAGES, i] + K[0, i])
        for r in range(4):
            acc = 0.0
            for j in range(N_ROWS):
                acc += D[r, j] * K[j, i]
            F[3 + r, i] = h * acc


@njit
def dense(y, F, x, out):
    """The state at the fraction ``x`` of the step (``F`` from :func:`dense_prepare`)."""
    for i in range(y.size):
        acc = 0.0
        for r in range(6, -1, -1):
            acc += F[r, i]
            acc *= x if (6 - r) % 2 == 0 else 1.0 - x
        out[i] = y[i] + acc
