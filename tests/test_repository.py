"""Checks on the repository itself, not on what it builds.

A merge that leaves conflict markers behind still passes every other check
when the markers land in a document or a shell script; this one fails.
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A whole line of exactly these: how git writes a conflict, never how
# Markdown or code here is written (a Markdown rule of '=' is not 7 long);
# '|||||||' opens the merge base in git's diff3 style.
CONFLICT_MARKERS = r"^(<<<<<<< .*|\|\|\|\|\|\|\| .*|=======|>>>>>>> .*)$"


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    found = subprocess.run(
        ["git", "grep", "-n", "-I", "-E", CONFLICT_MARKERS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 1, f"conflict markers left by a merge:\n{found.stdout}"
