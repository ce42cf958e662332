"""Whole-network latency from a table of blocks: the sum, the affine fit, and the per-kind calibration.

A table times every block alone. A runtime that fuses across block boundaries (ONNX Runtime folds a residual add
or an activation into the next kernel, the deploy form's convolutions pick other algorithms when a block's input
comes from another block) and whose caches hold one block's weights but not a network's does not run the sum of
those times. Two ways out are known (see ``docs/search.md``, "Which predictor"):

* nn-Meter times the units the runtime really runs, blocks in context; our variant of it is the context table
  (``search lut --context K``: every shape-preserving block timed as a chain of ``K`` copies, divided by ``K``);
* LitePred / HELP adapt a predictor with a handful of whole-network measurements on the target device.

We ship the second: :class:`KindCalibration` fits, on the networks ``search lut-check`` measures anyway,

    measured ~ sum_g c_g * (sum of the table entries of group g) + c_calls * (number of blocks) + c_0

where a group is a block kind at one stage (``ffn/s3``, ``attn/s4``, ``down/s2``, ``stem``, ...). Each ``c_g`` is
the common scale plus a deviation that a ridge penalty pulls towards zero, so with few networks it falls back to
the affine fit and with enough it learns that (say) FFNs in stage 1 run 30% faster inside a network than alone.
The fit is in relative error (each network weighted by 1/measured), the quantity the goal is stated in. The
penalty is chosen by leave-one-out on the networks given, and :func:`leave_one_out` refits everything (penalty
included) without the network it predicts: the honest figure for a network the calibration has not seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: below this many measured networks the per-kind fit is not attempted: the calibration is the affine fit
MIN_PER_KIND = 12
#: ridge penalties tried (on standardised deviations); the one with the smallest leave-one-out error is used
PENALTIES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences."""
    n = len(a)
    concordant = discordant = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denom = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return float((concordant - discordant) / denom) if denom else 0.0


def mape(pred: Sequence[float], meas: Sequence[float]) -> float:
    return float(100.0 * np.mean([abs(p - m) / m for p, m in zip(pred, meas, strict=True)]))


def within(pred: Sequence[float], meas: Sequence[float], percent: float = 10.0) -> float:
    """Share (%) of networks predicted within +-``percent`` of their measured latency (nn-Meter's metric)."""
    return float(100.0 * np.mean([abs(p - m) / m <= percent / 100 for p, m in zip(pred, meas, strict=True)]))


def accuracy(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float]:
    """The three figures the goal is stated in: Kendall's tau, MAPE and the share within +-10%."""
    return {
        "kendall_tau": kendall_tau(pred, meas),
        "mape_percent": mape(pred, meas),
        "within_10_percent": within(pred, meas),
    }


def fit_affine(pred: Sequence[float], meas: Sequence[float]) -> tuple[float, float]:
    """Least squares ``meas ~ scale * pred + offset`` in relative error (each point weighted by 1/meas)."""
    x, y = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    w = 1.0 / y
    A = np.stack([x * w, w], axis=1)
    scale, offset = np.linalg.lstsq(A, y * w, rcond=None)[0]
    return float(scale), float(offset)


def group_of(key: str) -> str:
    """The calibration group of a table key: its kind and, where the kind occurs in several stages, the stage."""
    parts = key.split("/")
    if len(parts) > 1 and parts[1].startswith("s") and parts[1][1:].isdigit():
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


@dataclass
class NetworkFeatures:
    """What the calibration sees of one network: the table sum of each group and the number of blocks."""

    groups: dict[str, float]
    calls: int

    @property
    def total(self) -> float:
        return float(sum(self.groups.values()))


def features(keys: Sequence[str], ms: Callable[[str], float]) -> NetworkFeatures:
    """The features of a network whose table entries are ``keys`` (repeated keys repeated)."""
    groups: dict[str, float] = Counter()
    for k in keys:
        groups[group_of(k)] += ms(k)
    return NetworkFeatures(dict(groups), len(keys))


@dataclass
class KindCalibration:
    """``measured ~ sum_g (scale + dev_g) * x_g + per_call_ms * calls + offset_ms`` (see the module docstring)."""

    scale: float
    deviations: dict[str, float] = field(default_factory=dict)
    per_call_ms: float = 0.0
    offset_ms: float = 0.0
    penalty: float = 0.0
    method: str = "per-kind"

    def predict(self, f: NetworkFeatures) -> float:
        return (
            sum((self.scale + self.deviations.get(g, 0.0)) * x for g, x in f.groups.items())
            + self.per_call_ms * f.calls
            + self.offset_ms
        )

    def coefficient(self, group: str) -> float:
        return self.scale + self.deviations.get(group, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scale": self.scale,
            "deviations": dict(self.deviations),
            "per_call_ms": self.per_call_ms,
            "offset_ms": self.offset_ms,
            "penalty": self.penalty,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KindCalibration:
        """A stored calibration; an affine one (``scale``, ``offset_ms`` only) is the special case without
        deviations and per-call term."""
        return cls(
            float(data.get("scale", 1.0)),
            {k: float(v) for k, v in (data.get("deviations") or {}).items()},
            float(data.get("per_call_ms", 0.0)),
            float(data.get("offset_ms", 0.0)),
            float(data.get("penalty", 0.0)),
            str(data.get("method", "affine")),
        )


def _solve(
    feats: Sequence[NetworkFeatures], meas: Sequence[float], groups: list[str], penalty: float
) -> KindCalibration:
    """Weighted ridge least squares; unknowns ``[scale, dev_g..., per_call, offset]``; penalty on the devs and,
    more lightly, on the per-call term, each standardised by its feature's typical share of a network."""
    y = np.asarray(meas, dtype=float)
    X = np.array([[f.groups.get(g, 0.0) for g in groups] for f in feats])
    calls = np.array([f.calls for f in feats], dtype=float)
    w = 1.0 / y
    A = np.column_stack([X.sum(1) * w, X * w[:, None], calls * w, w])
    b = np.ones(len(y))
    rel = (X * w[:, None]).mean(0)  # typical share of a network: a deviation of 1 moves predictions by this much
    rows = [np.zeros(A.shape[1]) for _ in groups]
    for i, r in enumerate(rows):
        r[1 + i] = np.sqrt(penalty) * max(rel[i], 1e-6)
    call_row = np.zeros(A.shape[1])
    call_row[1 + len(groups)] = np.sqrt(penalty) * 0.1 * max(float((calls * w).mean()), 1e-6)
    A_aug = np.vstack([A, *rows, call_row]) if rows else np.vstack([A, call_row])
    b_aug = np.concatenate([b, np.zeros(A_aug.shape[0] - len(b))])
    theta = np.linalg.lstsq(A_aug, b_aug, rcond=None)[0]
    devs = {g: float(theta[1 + i]) for i, g in enumerate(groups)}
    return KindCalibration(float(theta[0]), devs, float(theta[1 + len(groups)]), float(theta[-1]), penalty)


def _loo_predictions(feats, meas, groups, penalty) -> list[float]:
    out = []
    for i in range(len(feats)):
        cal = _solve(feats[:i] + feats[i + 1 :], meas[:i] + meas[i + 1 :], groups, penalty)
        out.append(cal.predict(feats[i]))
    return out


def fit_kinds(
    feats: Sequence[NetworkFeatures], meas: Sequence[float], penalties: Sequence[float] = PENALTIES
) -> KindCalibration:
    """The per-kind calibration of ``meas`` (ms), its penalty chosen by leave-one-out MAPE over ``penalties``;
    with fewer than :data:`MIN_PER_KIND` networks, the affine fit (as a calibration without deviations)."""
    feats, meas = list(feats), list(meas)
    if len(feats) < 3:
        raise ValueError(f"a calibration needs at least 3 measured networks, got {len(feats)}")
    if len(feats) < MIN_PER_KIND:
        scale, offset = fit_affine([f.total for f in feats], meas)
        return KindCalibration(scale, offset_ms=offset, method="affine")
    groups = sorted({g for f in feats for g in f.groups})
    best = min(penalties, key=lambda p: (mape(_loo_predictions(feats, meas, groups, p), meas), -p))
    return _solve(feats, meas, groups, best)


def leave_one_out(
    feats: Sequence[NetworkFeatures],
    meas: Sequence[float],
    method: str = "per-kind",
    penalties: Sequence[float] = PENALTIES,
) -> list[float]:
    """The prediction of every network by a calibration fitted without it (``method``: per-kind, affine or sum;
    for per-kind the penalty is chosen again each time, on the other networks only)."""
    feats, meas = list(feats), list(meas)
    out = []
    for i in range(len(feats)):
        rest_f, rest_m = feats[:i] + feats[i + 1 :], meas[:i] + meas[i + 1 :]
        if method == "sum":
            out.append(feats[i].total)
        elif method == "affine":
            s, o = fit_affine([f.total for f in rest_f], rest_m)
            out.append(s * feats[i].total + o)
        elif method == "per-kind":
            out.append(fit_kinds(rest_f, rest_m, penalties).predict(feats[i]))
        else:
            raise ValueError(f"unknown calibration method {method!r}; use sum, affine or per-kind")
    return out
