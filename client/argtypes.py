"""argparse ``type=`` converters shared by every command: one clear message per bad value."""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative {what[2:]}, got {text}")
    return value


def _positive_float(text: str, what: str) -> float:
    value = _non_negative_float(text, what)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive {what[2:]}, got {text}")
    return value


def seconds(text: str) -> float:
    return _non_negative_float(text, "a number of seconds")


def positive_seconds(text: str) -> float:
    return _positive_float(text, "a number of seconds")


def non_negative_number(text: str) -> float:
    return _non_negative_float(text, "a number")


def positive_number(text: str) -> float:
    return _positive_float(text, "a number")
