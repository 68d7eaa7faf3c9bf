"""One-line checks of the networks' hyper-parameters, phrased in their constructors' keyword names.

Every check raises ``ValueError("<key>=<value> is invalid: <rule>, e.g. <valid value>.")`` before a
module is built, so a bad preset or plans file is refused at once (also on the meta device) with
the key to fix, the value found and one that works.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def invalid(key: str, value: Any, rule: str, example: str) -> ValueError:
    """The package's one-line error for a bad hyper-parameter."""
    return ValueError(f"{key}={value!r} is invalid: {rule}, e.g. {example}.")


def is_integer(value: Any) -> bool:
    """An int, not a bool (JSON ``true`` must not pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_integer(key: str, value: Any, *, minimum: int, meaning: str, example: int) -> None:
    """``value`` is an integer >= ``minimum``; ``meaning`` names it in the message (e.g. "the MLP expansion")."""
    if not is_integer(value) or value < minimum:
        raise invalid(key, value, f"{meaning} must be an integer >= {minimum}", str(example))


def check_flag(key: str, value: Any) -> None:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise invalid(key, value, "must be True or False (JSON true / false)", "True")


def check_choice(key: str, value: Any, choices: Sequence[str], example: str) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        names = ", ".join(repr(choice) for choice in choices)
        raise invalid(key, value, f"must be one of {names}", repr(example))


def per_stage(key: str, value: Any, count: int, example: str) -> list:
    """``value`` as one entry per stage: a scalar is repeated, a sequence must have ``count`` entries."""
    if is_integer(value):
        return [value] * count
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != count:
        raise invalid(key, value, f"one entry per stage is needed ({count} here), or one integer for all", example)
    return list(value)


def per_axis(
    key: str, value: Any, spatial_dims: int, *, valid: Callable[[int], bool], rule: str, example: str
) -> tuple[int, ...]:
    """``value`` as one integer per spatial axis (a scalar applies to all), each passing ``valid``."""
    values = [value] * spatial_dims if is_integer(value) else value
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) != spatial_dims
        or not all(is_integer(v) and valid(v) for v in values)
    ):
        raise invalid(key, value, f"{rule} (one integer, or {spatial_dims} of them, one per axis)", example)
    return tuple(values)


def check_divides_every_stage(key: str, value: int, features: Sequence[int], meaning: str, preferred: int) -> None:
    """``value`` divides every stage width; the example is the largest divisor of all widths <= ``preferred``."""
    common = math.gcd(*features)
    if common % value:
        example = max(d for d in range(1, preferred + 1) if common % d == 0)
        raise invalid(key, value, f"{meaning} must divide every stage's channels {list(features)}", str(example))


def check_some_branch(family: str, branches: dict[str, Any]) -> None:
    """At least one of a block's two branches (e.g. ``use_mixer``, ``use_mlp``) is kept."""
    for key, value in branches.items():
        check_flag(key, value)
    if not any(branches.values()):
        first, second = branches
        raise invalid(first, False, f"with {second}=False too a {family} block would be empty", "True")
