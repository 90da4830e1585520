"""The size of a fresh environment with the default install, as a new user makes it; writes
BENCHMARKS.md.

    python bench/bench_install.py

Makes a scratch virtual environment, runs `pip install -e ".[detect]"` in it (what the README's
first run says), and reports its size on disk and its largest packages. Needs the package index.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import venv
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import machine, publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEFORE_GB = 6.2  # `[detect]` with ultralytics and CUDA torch, measured on 2026-11-29 (issue 21)


def megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = Path(scratch) / "venv"
        venv.create(env, with_pip=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{REPO}[detect]"], check=True, stderr=subprocess.DEVNULL)
        total = megabytes(env)
        site = next(env.glob("lib/python*/site-packages"))
        largest = sorted(((megabytes(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:5]
    body = "\n".join(
        [
            f"{date.today().isoformat()}, {machine()}, CPU only.",
            "",
            "| environment | size on disk |",
            "|---|---|",
            '| `pip install -e ".[detect]"`, fresh venv (default filter: onnxruntime, no torch) '
            f"| **{total:,.0f} MB** |",
            f"| before (issue 21): the same with ultralytics, which pulled CUDA torch | {BEFORE_GB} GB |",
            "",
            "Largest packages now: " + ", ".join(f"{name} {size:.0f} MB" for size, name in largest) + ". "
            "Not shown: the two ONNX models (a few MB each) land in the Hugging Face cache at the first run; "
            "the optional `[yolo]` extra brings torch back (CPU build: about 1 GB more).",
        ]
    )
    publish("Install size (`bench/bench_install.py`)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
