"""How accuracies and errors read in console text, train.log and report tables: percentages with
two decimals (`test accuracy 98.52%`, `error 1.48%`). JSON files keep fractions (accuracy 0.9852)
and their `*_percent` keys; this module formats text only. Imports nothing, so that every layer
(training, analysis, commands) can use it.
"""
from typing import Optional

PERCENT_DECIMALS = 2
"""Two decimals: 0.01% is one image in 10,000, the resolution of the MNIST test set."""


def percent(fraction: Optional[float], sign: bool = True) -> str:
    """An accuracy (a fraction in [0, 1]) as text: 0.9852 -> '98.52%' ('98.52' without `sign`,
    for a table column already headed %); None -> 'n/a'."""
    return "n/a" if fraction is None else percent_points(100.0 * float(fraction), sign)


def percent_points(value: Optional[float], sign: bool = True) -> str:
    """A number already in percent (test_error_percent) as text: 1.48 -> '1.48%'; None -> 'n/a'."""
    if value is None:
        return "n/a"
    return f"{float(value):.{PERCENT_DECIMALS}f}" + ("%" if sign else "")
