"""Child-Pugh score and class (docs/protocol.md §3), from values already in canonical units.

Bilirubin mg/dL, albumin g/dL, INR (PT prolongation in seconds only when INR is missing), ascites
(none/mild/moderate/severe) and encephalopathy (West Haven grade 0-4). Middle bands are closed at both
ends; a missing component makes the score unknown.
"""

from __future__ import annotations

import msgspec

from fhiradapter.core.limits import ALBUMIN_UPPER, BILIRUBIN_BANDS, CLASS_A_MAX, CLASS_B_MAX, INR_BANDS, PT_BANDS

# docs/protocol.md §3: the fixed bands are in the one table (core/limits.py); the albumin lower cut-off is
# configurable and passed in.
ASCITES_POINTS = {"none": 1, "mild": 2, "moderate": 3, "severe": 3}


class ChildPugh(msgspec.Struct, frozen=True):
    """A Child-Pugh score (None when a component is missing), its class, each component's points."""

    score: int | None
    cls: str | None
    points: dict[str, int]
    missing: tuple[str, ...]
    used_pt: bool


def rising_points(value: float, bands: tuple[float, float]) -> int:
    """1 below the lower band, 2 inside the closed band, 3 above it (bilirubin, INR, PT)."""
    low, high = bands
    if value < low:
        return 1
    return 2 if value <= high else 3


def albumin_points(value: float, lower: float) -> int:
    """1 above 3.5 g/dL, 2 within [lower, 3.5], 3 below ``lower``."""
    if value > ALBUMIN_UPPER:
        return 1
    return 2 if value >= lower else 3


def encephalopathy_points(grade: int) -> int:
    return 1 if grade == 0 else 2 if grade <= 2 else 3


def child_pugh_class(score: int) -> str:
    return "A" if score <= CLASS_A_MAX else "B" if score <= CLASS_B_MAX else "C"


def score_child_pugh(
    *,
    bilirubin: float | None,
    albumin: float | None,
    inr: float | None,
    pt_prolongation: float | None,
    ascites: str | None,
    encephalopathy: int | None,
    albumin_lower: float,
) -> ChildPugh:
    points: dict[str, int] = {}
    missing: list[str] = []
    if bilirubin is None:
        missing.append("bilirubin")
    else:
        points["bilirubin"] = rising_points(bilirubin, BILIRUBIN_BANDS)
    if albumin is None:
        missing.append("albumin")
    else:
        points["albumin"] = albumin_points(albumin, albumin_lower)
    used_pt = False
    if inr is not None:
        points["inr"] = rising_points(inr, INR_BANDS)
    elif pt_prolongation is not None:
        points["pt_prolongation"] = rising_points(pt_prolongation, PT_BANDS)
        used_pt = True
    else:
        missing.append("inr")
    if ascites is None or ascites not in ASCITES_POINTS:
        missing.append("ascites")
    else:
        points["ascites"] = ASCITES_POINTS[ascites]
    if encephalopathy is None:
        missing.append("encephalopathy")
    else:
        points["encephalopathy"] = encephalopathy_points(encephalopathy)
    if missing:
        return ChildPugh(None, None, points, tuple(missing), used_pt)
    score = sum(points.values())
    return ChildPugh(score, child_pugh_class(score), points, (), used_pt)
