"""Budgets for the property tests, scaled by the hypothesis profile (tests/conftest.py).

A property says how many examples it needs in the normal suite; ``fuzz``
(``HYPOTHESIS_PROFILE=fuzz``) multiplies that for a long run by hand.
"""

from __future__ import annotations

import os

from hypothesis import settings

SCALE = {"ci": 1, "fuzz": 50}.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), 1)


def examples(n: int, **kwargs: object) -> settings:
    """Settings for a property that runs ``n`` examples in the normal suite."""
    return settings(max_examples=n * SCALE, deadline=None, **kwargs)  # type: ignore[arg-type]
