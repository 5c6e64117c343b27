"""LBT: INT gradients with an adaptive clipping interval (Kim et al., ECCV 2024), in plain PyTorch.

The quantizer, and one step of the γ adaptation as a pure function of tensors
(`lbt_step_reference`): no ``.item()``, no Python branch on a tensor's value, so it runs on the
device without a host sync and traces whole (``torch.compile(fullgraph=True)``). The float
helpers (`clipped_fraction`, `initial_gamma`, `next_gamma`) are that same arithmetic, read back
to Python for tests and reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.reference.scaling_groups import group_amax, normalize_dims

LBT_A = 1e-3  # the paper's a in the optimal condition R(γ*) = a / (2^b - 1)
GAMMA_STEP = 1e-3
GAMMA_FLOOR = 1e-3
GAMMA_CEIL = 1.0


def lbt_target(bits: int) -> float:
    """Optimal fraction of clipped gradients, ``a / (2^b - 1)`` (≈ 6.7e-5 for 4 bits)."""
    return LBT_A / (2**bits - 1)


def _quantize(gf: torch.Tensor, amax: torch.Tensor, gamma: torch.Tensor | float, bits: int, u: torch.Tensor):
    qmax = float(2**bits - 2)
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(torch.float32)  # what a Python float γ becomes in a float32 product
    c = amax * gamma
    delta = 2 * c / qmax
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    q = torch.clamp(torch.floor((gf + c) / delta + u), 0.0, qmax)
    return q * delta - c


def lbt_quantize_reference(
    g: torch.Tensor,
    gamma: float | torch.Tensor,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """LBT (Kim et al., ECCV 2024, Sec. 4, the fixed-point gradient quantizer with clipping):
    ``c = γ·max|g|``, ``qmax = 2^b − 2`` (levels −7..7 for 4 bits), ``Δ = 2c/qmax``,
    ``q = clamp(⌊(g + c)/Δ + u⌋, 0, qmax)`` with ``u ~ U[0, 1)``, ``ĝ = q·Δ − c``.

    Unbiased inside ``[−c, c]``; values beyond are clipped to ``±c`` on purpose (the paper
    trades that bias for a finer step on the bulk). ``max`` is per group of ``reduce_dims``
    (per tensor in the paper). ``noise`` in [0, 1) replaces the random draw (test hook).
    ``gamma`` may be a 0-d tensor (the op's state). All-zero groups give zeros; NaN/inf propagate.
    """
    if g.numel() == 0:
        return g.clone()
    gf = g.float()
    amax = group_amax(gf, normalize_dims(reduce_dims, g.ndim))
    u = torch.rand_like(gf) if noise is None else noise.float()
    return _quantize(gf, amax, gamma, bits, u).to(g.dtype)


def clipped_share(gf: torch.Tensor, amax: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """``r = mean(|g| > γ·max|g|)`` as a float32 0-d tensor (``amax`` from `group_amax`)."""
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(torch.float32)
    return (gf.abs() > amax * gamma).float().mean()


def clipped_fraction(g: torch.Tensor, gamma: float, reduce_dims: Sequence[int] = ()) -> float:
    """``r = mean(|g| > γ·max|g|)``, the share of elements the clip cuts."""
    gf = g.float()
    return float(clipped_share(gf, group_amax(gf, normalize_dims(reduce_dims, g.ndim)), gamma))


def _gamma_schedule() -> tuple[float, ...]:
    gammas, gamma = [], GAMMA_CEIL
    while gamma > GAMMA_FLOOR:
        gamma = max(gamma - GAMMA_STEP, GAMMA_FLOOR)
        gammas.append(gamma)
    return tuple(gammas)


# The γ values the first-batch loop tries, in order: 1 − 1e-3, 1 − 2e-3, ... down to the floor,
# accumulated as the paper's loop does, so that each value is bit for bit the loop's.
GAMMA_SCHEDULE = _gamma_schedule()
_SCHEDULE_ON: dict[torch.device, torch.Tensor] = {}


def gamma_schedule_on(device: torch.device) -> torch.Tensor:
    """`GAMMA_SCHEDULE` as a float64 tensor on ``device``, copied there once: a blocking copy
    from host memory would wait for the device on every step."""
    if torch.compiler.is_compiling():  # traced: a constant of the graph
        return torch.tensor(GAMMA_SCHEDULE, dtype=torch.float64, device=device)
    schedule = _SCHEDULE_ON.get(device)
    if schedule is None:
        schedule = _SCHEDULE_ON[device] = torch.tensor(GAMMA_SCHEDULE, dtype=torch.float64, device=device)
    return schedule


def initial_gamma_tensor(gf: torch.Tensor, amax: torch.Tensor, bits: int) -> torch.Tensor:
    """A layer's first γ, solved on its first batch as tensor ops (float64 0-d): the smallest γ of
    the 1e-3 schedule whose clipped fraction ``r(γ)`` still meets the optimal condition
    ``r ≤ a/(2^b − 1)``; γ = 1 − 1e-3 when even that clips more, the floor when none does.

    Why not the paper's loop (step γ down from 1 while an EMA, factor 0.999, of ``r`` stays at
    or below the target): an EMA that starts at 0 needs ``r`` far above the target before its
    average crosses it, so the loop stopped 15–350× past the optimum on Gaussian, Laplace and
    Student-t gradients, and the per-step rule (±1e-3) then took ~200 steps to climb back.
    Solving for the quantile directly is what the loop was approximating.

    Every ``r(γ)`` of the schedule at once: each element's ratio ``|g|/max|g|`` is placed among
    the (ascending) schedule by one `searchsorted`, and a cumulative count gives how many ratios
    lie at or below each γ. No value reaches the host.
    """
    candidates = gamma_schedule_on(gf.device)  # descending: 1 − 1e-3, 1 − 2e-3, ..., floor
    m = candidates.numel()
    ascending = candidates.flip(0)
    ratio = (gf.abs() / amax).nan_to_num(0.0).flatten().double()
    n = ratio.numel()
    # below[i] = #{schedule values < ratio}; ratio <= ascending[j] exactly when below <= j.
    below = torch.searchsorted(ascending, ratio)
    hist = torch.zeros(m + 1, dtype=torch.int64, device=gf.device).scatter_add_(
        0, below, torch.ones_like(below)
    )
    at_most = torch.cumsum(hist, 0)[:m].flip(0)  # per γ of the schedule, in descending order
    share = (n - at_most).double() / n  # r(γ): non-decreasing along the schedule
    over = share > lbt_target(bits)
    last_ok = (over.int().argmax() - 1).clamp(min=0)
    stop = torch.where(over.any(), last_ok, m - 1)
    return candidates.gather(0, stop.reshape(1)).reshape(())  # a tensor index: no host read


def initial_gamma(g: torch.Tensor, bits: int, reduce_dims: Sequence[int] = ()) -> float:
    """`initial_gamma_tensor` of ``g``, as a float."""
    gf = g.float()
    return float(initial_gamma_tensor(gf, group_amax(gf, normalize_dims(reduce_dims, g.ndim)), bits))


def lbt_step_reference(
    g: torch.Tensor,
    gamma: torch.Tensor,
    updates: torch.Tensor,
    bits: int,
    reduce_dims: Sequence[int],
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LBT step: ``(ĝ, next γ, next update count, clipped share at the γ used)``.

    The first step (``updates == 0``) initialises γ on this batch (`initial_gamma_tensor`) and
    quantizes with it; later steps quantize with ``γ`` and move it,
    ``γ ← clamp(γ + 1e-3·sign(r − target), 1e-3, 1)``, from the unquantized ``g`` (LBT Sec. 4.2).
    Guards: a non-finite ``g`` (an overflowing loss scale) leaves γ and the count alone (clipped
    share NaN); a tensor too small to see the target (``numel·target < 1``, where the count would
    almost always be 0 and γ would drift to its floor) keeps γ but counts the step. Both
    branches are computed and picked with `torch.where`: no value ever reaches the host.
    """
    nan = torch.full((), float("nan"), dtype=torch.float64, device=g.device)
    if g.numel() == 0:
        return g.clone(), gamma, updates, nan
    gf = g.float()
    amax = group_amax(gf, normalize_dims(reduce_dims, g.ndim))
    gamma64 = gamma.to(torch.float64)
    finite = torch.isfinite(gf).all()
    target = lbt_target(bits)
    if g.numel() * target < 1:  # a static shape test, not a value
        used = new = gamma64
    else:
        first = updates == 0
        used = torch.where(first & finite, initial_gamma_tensor(gf, amax, bits), gamma64)
        r = clipped_share(gf, amax, gamma64).double()
        stepped = torch.clamp(
            gamma64 + GAMMA_STEP * ((r > target).double() - (r < target).double()), GAMMA_FLOOR, GAMMA_CEIL
        )
        new = torch.where(first, used, stepped)
    out = _quantize(gf, amax, used, bits, noise.float()).to(g.dtype)
    clipped = torch.where(finite, clipped_share(gf, amax, used).double(), nan)
    return (
        out,
        torch.where(finite, new, gamma64).to(gamma.dtype),
        updates + finite.to(updates.dtype),
        clipped,
    )


def next_gamma(
    g: torch.Tensor, gamma: float, bits: int, reduce_dims: Sequence[int], first: bool
) -> tuple[float, float]:
    """(γ for the next step, clipped fraction at this step's γ), read back from
    `lbt_step_reference` (``first``: the first-batch initialisation instead of a step)."""
    if g.numel() == 0 or not bool(torch.isfinite(g).all()):
        return gamma, float("nan")
    gamma_t = torch.tensor(gamma, dtype=torch.float64, device=g.device)
    updates = torch.tensor(0 if first else 1, dtype=torch.int64, device=g.device)
    _, new, _, _ = lbt_step_reference(
        g, gamma_t, updates, bits, reduce_dims, torch.zeros_like(g, dtype=torch.float32)
    )
    return float(new), clipped_fraction(g, gamma, reduce_dims)
