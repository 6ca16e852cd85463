"""The one eps formatter and the one percent formatter: every report, log line, card and CLI message uses them."""

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


__all__ = ["format_eps", "format_percent"]
