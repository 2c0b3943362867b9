"""How hard the fuzz tests try: every example in the full suite (CI's), a quarter in the fast loop
(`scripts/test --fast` sets PIML_TEST_FAST=1), so the loop a developer runs all day stays short."""

from __future__ import annotations

import os

FAST = os.environ.get("PIML_TEST_FAST") == "1"


def examples(full: int) -> int:
    """Hypothesis's max_examples: `full` in the full suite, a quarter (at least 20) in the fast loop."""
    return max(20, full // 4) if FAST else full


if FAST:  # the same for the fuzz tests that keep Hypothesis's default number of examples
    from hypothesis import settings

    settings.register_profile("piml-fast", max_examples=25)
    settings.load_profile("piml-fast")
