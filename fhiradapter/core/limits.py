"""The rule book's fixed limits (docs/protocol.md §2-§5), each written once, here.

The rules read them (``eligibility``, ``child_pugh``, ``response``, ``toxicity``), and so does the published study
(``study_fhir``: the eligibility Group and the PlanDefinition state the same values). The limits a site may
change are not here: they are in the mappings folder (``protocol.toml``), and so are the code lists
(``codes.toml``). ``tests/test_study_fhir.py`` checks that no rule module writes one of these values itself.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Literal

import msgspec

Comparator = Literal["<", "<=", ">=", ">"]


class Limit(msgspec.Struct, frozen=True, kw_only=True):
    """A value's limit: a value passes when ``value <comparator> limit``."""

    comparator: Comparator
    value: float
    unit: str  # UCUM code of the concept's canonical unit ("a" for years, "" for a score)
    decimals: int  # as the rule book prints it: 1.0 x10^9/L, 40 x10^9/L

    def passes(self, value: float) -> bool:
        if self.comparator == "<":
            return value < self.value
        if self.comparator == "<=":
            return value <= self.value
        return value >= self.value if self.comparator == ">=" else value > self.value


# §2 eligibility (inclusive exactly as written: ANC 1.0, platelets 40, creatinine 2.0 and ECOG 2 pass).
AGE = Limit(comparator="<", value=75, unit="a", decimals=0)  # completed years at screening
ECOG = Limit(comparator="<=", value=2, unit="", decimals=0)
ANC = Limit(comparator=">=", value=1.0, unit="10*9/L", decimals=1)
PLATELETS = Limit(comparator=">=", value=40.0, unit="10*9/L", decimals=0)
CREATININE = Limit(comparator="<=", value=2.0, unit="mg/dL", decimals=1)
LAB_WINDOW_DAYS = 28  # labs: the latest within this many days before screening, both ends included

# §3 Child-Pugh: bands closed at both ends (the albumin lower cut-off is configurable: protocol.toml).
BILIRUBIN_BANDS = (2.0, 3.0)  # mg/dL
ALBUMIN_UPPER = 3.5  # g/dL
INR_BANDS = (1.7, 2.3)
PT_BANDS = (4.0, 6.0)  # seconds of prolongation, only when INR is missing
CHILD_PUGH_MIN_SCORE = 5
CLASS_A_MAX, CLASS_B_MAX = 6, 9  # class A 5-6, B 7-9, C 10-15
ELIGIBLE_CHILD_PUGH_CLASSES = ("A", "B")

# §4 response (the AFP window and the SD minimum time are configurable: protocol.toml [response]).
BASELINE_WINDOW_DAYS = 28  # baseline within this many days before (or on) the index date
CONFIRMATION_DAYS = 28  # a second CR/PR at least this many days later

# §4 response ratios, exact: compared by multiplication (4 x value >= 5 x nadir), never as rounded percentages.
PD_RATIO = Fraction(5, 4)  # PD: SPD or AFP >= 1.25 x nadir
PR_RATIO = Fraction(1, 2)  # PR: SPD or AFP <= 0.5 x baseline

# §5 NCI CTC v2.0 lab grades: the bounds, grade 1's first. A value's grade is how many of them it passes.
ANC_GRADE_BELOW = (Decimal("2.0"), Decimal("1.5"), Decimal("1.0"), Decimal("0.5"))  # x10^9/L: G1 [1.5, 2.0) ...
PLATELET_GRADE_BELOW = (Decimal(75), Decimal(50), Decimal(10))  # x10^9/L: G2 [50, 75), G3 [10, 50), G4 < 10
CREATININE_GRADE_ABOVE_ULN = (Decimal(1), Decimal("1.5"), Decimal(3), Decimal(6))  # multiples of ULN: G1 (1, 1.5]

# The table the published study states, by what each limit is about.
FIXED_LIMITS: dict[str, Limit] = {
    "age": AGE,
    "ecog": ECOG,
    "anc": ANC,
    "platelets": PLATELETS,
    "creatinine": CREATININE,
}
FIXED_DAYS: dict[str, int] = {
    "lab_window": LAB_WINDOW_DAYS,
    "baseline_window": BASELINE_WINDOW_DAYS,
    "confirmation": CONFIRMATION_DAYS,
}
