"""Paired comparison of two models evaluated on the same images: is A more robust than B, beyond noise?

Two robustness reports of the same test images (same dataset, threat, seed and selection) carry one outcome per
image and attack (:attr:`~robust_student.evaluation.RobustnessReport.per_example`). The difference of their
accuracies is the mean of per-image differences ``d_i = a_i - b_i``; its standard error is ``sd(d) / sqrt(n)``.
Pairing removes the images both models get right (or both wrong), so it is far tighter than comparing two
independent binomial errors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .evaluation import RobustnessReport
from .fileio import read_json

SAME_IMAGES_KEYS = ("dataset", "threat", "eps", "n_examples", "seed", "selection")


@dataclass(frozen=True)
class PairedDifference:
    """``a_accuracy - b_accuracy`` under ``attack`` on the same ``n`` images, with its paired standard error;
    ``only_a`` / ``only_b`` count the images only one model gets right."""

    attack: str
    n: int
    a_accuracy: float
    b_accuracy: float
    difference: float
    standard_error: float
    only_a: int
    only_b: int

    @property
    def z(self) -> float:
        """The difference in standard errors (0 when the models never disagree)."""
        if self.standard_error == 0:
            return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)
        return self.difference / self.standard_error

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "z": self.z}


def load_report(value: RobustnessReport | Mapping[str, Any] | str | Path) -> RobustnessReport:
    """A report object, dict or ``robust-student eval --output`` JSON file as a :class:`RobustnessReport`."""
    if isinstance(value, RobustnessReport):
        return value
    if isinstance(value, (str, Path)):
        path, value = value, read_json(Path(value), "robustness report")
        if not isinstance(value, dict):
            raise ValueError(f"{path}: a robustness report is a JSON object (robust-student eval --output)")
    return RobustnessReport.from_dict(dict(value))


def paired_difference(a: RobustnessReport | Mapping[str, Any] | str | Path,
                      b: RobustnessReport | Mapping[str, Any] | str | Path, attack: str = "autoattack"
                      ) -> PairedDifference:
    """A's accuracy minus B's under ``attack`` (or ``"clean"``) on the same images, with the paired standard error.

    Reports (objects, dicts or JSON files) must come from the same images: the same dataset, threat, eps, number
    of examples, seed and selection, and both must carry per-example outcomes for ``attack`` (reports written
    before per-example outcomes existed do not: re-run ``robust-student eval``)."""
    ra, rb = load_report(a), load_report(b)
    differing = [f"{k}: {getattr(ra, k)!r} vs {getattr(rb, k)!r}" for k in SAME_IMAGES_KEYS
                 if getattr(ra, k) != getattr(rb, k)]
    if differing:
        raise ValueError(f"the two reports are not of the same images ({'; '.join(differing)}): evaluate both with "
                         "the same --data, --eps, --n-examples and --seed")
    missing = [r.model for r in (ra, rb) if attack not in r.per_example]
    if missing:
        raise ValueError(f"no per-example outcomes for {attack!r} in the report(s) of {', '.join(missing)}: "
                         f"re-run robust-student eval with --attacks {attack} (a paired comparison needs them)")
    xa, xb = ra.per_example[attack], rb.per_example[attack]
    if len(xa) != len(xb) or len(xa) != ra.n_examples:
        raise ValueError(f"per-example outcomes of {attack!r} have {len(xa)} and {len(xb)} entries for "
                         f"{ra.n_examples} examples: a report was edited by hand?")
    n = len(xa)
    diffs = [int(p) - int(q) for p, q in zip(xa, xb)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return PairedDifference(attack=attack, n=n, a_accuracy=xa.count("1") / n, b_accuracy=xb.count("1") / n,
                            difference=mean, standard_error=math.sqrt(variance / n),
                            only_a=diffs.count(1), only_b=diffs.count(-1))


__all__ = ["PairedDifference", "paired_difference", "load_report"]
