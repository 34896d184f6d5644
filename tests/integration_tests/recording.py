"""What the record-command tests share (tests/integration_tests/test_<provider>_record.py):
run ``make record-<provider>`` against the provider's protocol fixture into a scratch folder,
then replay the new cassettes offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import peers


def make_record(provider: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``make record-<provider>`` in ``env``. These tests run inside the installed environment:
    ``-o`` keeps make from reinstalling it when pyproject.toml is newer than the install stamp
    (a working tree mid-change)."""
    return subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", f"record-{provider}"],
        cwd=peers.REPO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


def record(provider: str, env: dict[str, str], folder: Path) -> tuple[list[str], str]:
    """Record into ``folder`` (``<PREFIX>_CASSETTE_DIR`` in ``env``, source ``fixture``): the
    names of the cassettes written, and their text."""
    rec = make_record(provider, env)
    assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-3000:]
    cassettes = sorted((folder / "fixture").glob("*.yaml"))
    return [c.stem for c in cassettes], "".join(c.read_text() for c in cassettes)


def replay(provider: str, env: dict[str, str], passed: int) -> None:
    """The provider's cassette tests in ``env`` (no endpoint, no key): all ``passed`` pass."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         f"tests/unit_tests/test_{provider}_cassettes.py"],
        cwd=peers.REPO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{passed} passed" in run.stdout
