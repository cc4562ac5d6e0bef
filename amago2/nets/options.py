"""Checks on the keyword options that the encoder factories pass through to an encoder class."""

from __future__ import annotations

from typing import Dict


def reject_unknown_options(cls: type, given: Dict[str, object], valid: Dict[str, object]) -> None:
    """TypeError naming the options `cls` does not take, and listing the ones it does (with defaults)."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(
            f"{cls.__name__} got unknown option(s) {unknown}; its options are "
            + ", ".join(f"{k}={v!r}" for k, v in valid.items())
        )
