"""The one eps, percent and attack-name formatter: every report, log line, card and CLI message uses them."""

from __future__ import annotations


def format_eps(eps: float, norm: str = "linf") -> str:
    """A radius as the literature writes it: L-inf ``k/255`` when it is one (``0`` for zero), else a decimal.

    ``format_eps(8 / 255) == "8/255"``, ``format_eps(0.1) == "0.1"``, ``format_eps(0.5, "l2") == "0.5"``.
    """
    if norm == "linf":
        if eps == 0:
            return "0"
        k = eps * 255
        if abs(k - round(k)) < 1e-6 and round(k) > 0:
            return f"{round(k)}/255"
    return f"{eps:g}"


def format_percent(fraction: float | None, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage, ``format_percent(0.6) == "60.00 %"``; ``None`` shows as ``-``."""
    if fraction is None:
        return "-"
    return f"{100 * fraction:.{digits}f} %"


ATTACK_TITLES = {"fgsm": "FGSM", "pgd20": "PGD-20", "cw20": "CW-inf-20", "autoattack": "AutoAttack",
                 "apgd-ce": "APGD-CE", "square": "Square"}


def attack_title(name: str) -> str:
    """``pgd20`` -> ``PGD-20``, ``pgd:10`` -> ``PGD-10``, ``square:1000`` -> ``Square (1000 queries)``."""
    if name.startswith("pgd:"):
        return f"PGD-{name[4:]}"
    if name.startswith("square:"):
        return f"Square ({name[7:]} queries)"
    return ATTACK_TITLES.get(name, name)


__all__ = ["format_eps", "format_percent", "attack_title"]
