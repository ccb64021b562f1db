"""Similarity transforms between star lists (reference -> frame) and their least-squares fit.

Conventions: positions are 0-based with pixel centres on integers, x = column, y = row. A
`Transform` maps reference coordinates to frame coordinates; parity -1 is a mirror image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineValueError, RegistrationError

__all__ = ["Transform", "fit_transform"]


@dataclass(frozen=True)
class Transform:
    """A similarity transform from reference to frame coordinates.

        x' = a x - b (p y) + tx
        y' = b x + a (p y) + ty

    with parity p = +1 (a rotation, scale and shift: every telescope's own frames) or -1 (a
    mirror image first, for matching against a sky catalogue of unknown handedness). The scale is
    hypot(a, b) and the rotation atan2(b, a), counter-clockwise from +x in the (x, y) plane.
    """

    a: float = 1.0
    b: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    parity: int = 1

    def __post_init__(self):
        for name in ("a", "b", "tx", "ty"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise EngineValueError(f"Transform.{name} must be finite, got {value!r}")
        if self.parity not in (1, -1):
            raise EngineValueError(f"Transform.parity must be +1 or -1, got {self.parity!r}")
        if self.a == 0.0 and self.b == 0.0:
            raise EngineValueError("Transform scale must be > 0")

    @classmethod
    def from_parameters(cls, *, scale: float = 1.0, rotation_deg: float = 0.0, tx: float = 0.0,
                        ty: float = 0.0, parity: int = 1) -> "Transform":
        """The transform with this scale, rotation (degrees, counter-clockwise) and shift."""
        angle = math.radians(rotation_deg)
        return cls(scale * math.cos(angle), scale * math.sin(angle), tx, ty, parity)

    @property
    def scale(self) -> float:
        return math.hypot(self.a, self.b)

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.b, self.a))

    @property
    def matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix M with [x', y', 1] = M @ [x, y, 1]."""
        p = self.parity
        return np.array([[self.a, -self.b * p, self.tx],
                         [self.b, self.a * p, self.ty],
                         [0.0, 0.0, 1.0]])

    def apply(self, xy) -> np.ndarray:
        """Map an (n, 2) array of reference positions into the frame."""
        xy = np.asarray(xy, dtype=np.float64)
        x, y = xy[..., 0], self.parity * xy[..., 1]
        return np.stack([self.a * x - self.b * y + self.tx,
                         self.b * x + self.a * y + self.ty], axis=-1)

    __call__ = apply

    def inverse(self) -> "Transform":
        """The transform from frame back to reference coordinates."""
        s2 = self.a * self.a + self.b * self.b
        p = self.parity
        # Inverse of M = [[a, -b p], [b, a p]]: (1 / (p s2)) [[a p, b p], [-b, a]].
        ia, ib = self.a / s2, -self.b * p / s2
        # With parity -1 the inverse is also a mirror: x = ia x' - ib (p y'), as apply computes.
        inverse = Transform(ia, ib, 0.0, 0.0, p)
        tx, ty = inverse.apply(np.array([self.tx, self.ty]))
        return Transform(ia, ib, -tx, -ty, p)

    def compose(self, first: "Transform") -> "Transform":
        """The transform that applies `first`, then this one."""
        m = self.matrix @ first.matrix
        p = self.parity * first.parity
        return Transform(m[0, 0], m[1, 0], m[0, 2], m[1, 2], p)




def _fit_similarity(p: np.ndarray, q: np.ndarray, parity: np.ndarray | int = 1):
    """Least-squares similarity q ~ T(p) for stacks of point sets: p, q (..., m, 2).

    Returns a, b, tx, ty, each of shape (...). `parity` (scalar or (...,)) mirrors p first.
    """
    parity = np.asarray(parity, dtype=np.float64)
    px = p[..., 0]
    py = p[..., 1] * parity[..., None] if parity.ndim else p[..., 1] * parity
    qx, qy = q[..., 0], q[..., 1]
    mpx, mpy = px.mean(axis=-1), py.mean(axis=-1)
    mqx, mqy = qx.mean(axis=-1), qy.mean(axis=-1)
    cpx, cpy = px - mpx[..., None], py - mpy[..., None]
    cqx, cqy = qx - mqx[..., None], qy - mqy[..., None]
    denom = np.sum(cpx * cpx + cpy * cpy, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.sum(cpx * cqx + cpy * cqy, axis=-1) / denom
        b = np.sum(cpx * cqy - cpy * cqx, axis=-1) / denom
    tx = mqx - (a * mpx - b * mpy)
    ty = mqy - (b * mpx + a * mpy)
    return a, b, tx, ty


def _apply_many(a, b, tx, ty, parity, xy):
    """Map xy (m, 2) by K transforms given as arrays (K,): returns (K, m, 2)."""
    x = xy[None, :, 0]
    y = xy[None, :, 1] * parity[:, None]
    return np.stack([a[:, None] * x - b[:, None] * y + tx[:, None],
                     b[:, None] * x + a[:, None] * y + ty[:, None]], axis=-1)



def fit_transform(ref_xy, xy, *, parity: int = 1) -> tuple[Transform, float]:
    """Least-squares similarity from matched star pairs: ref_xy[i] maps to xy[i].

    For stars already paired (e.g. re-centred at their predicted positions). Returns the
    transform and the rms residual in pixels; at least 2 pairs are needed (3 for a residual).
    """
    p = np.asarray(ref_xy, dtype=np.float64)
    q = np.asarray(xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or q.shape != p.shape:
        raise EngineValueError(f"need two (n, 2) arrays of matched positions, got {p.shape} "
                               f"and {q.shape}")
    if len(p) < 2:
        raise RegistrationError(f"{len(p)} matched stars: at least 2 are needed")
    a, b, tx, ty = _fit_similarity(p, q, parity)
    transform = Transform(float(a), float(b), float(tx), float(ty), parity)
    residual = transform.apply(p) - q
    rms = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)))) if len(p) > 2 else 0.0
    return transform, rms


