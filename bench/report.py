"""Write one benchmark's section into BENCHMARKS.md, replacing that section's previous figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
_HEADER = "# Benchmarks\n\nFigures written by the scripts in `bench/`; rerun a script to refresh its section.\n"


def update_benchmarks(title: str, body: str) -> None:
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else _HEADER
    heading = f"## {title}"
    sections = text.split("\n## ")
    head, rest = sections[0], [f"## {section}" for section in sections[1:]]
    rest = [section for section in rest if not section.startswith(heading)]
    rest.append(f"{heading}\n\n{body.strip()}\n")
    BENCHMARKS.write_text(
        "\n".join([head.rstrip() + "\n", *(section.rstrip() + "\n" for section in rest)]), encoding="utf-8"
    )


def publish(title: str, body: str, *, write: bool) -> None:
    """Print a benchmark's figures and, unless told not to, put them in BENCHMARKS.md."""
    print(body)
    if write:
        update_benchmarks(title, body)


def machine() -> str:
    """Cores, CPU model and the versions that the figures depend on."""
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in line
            ),
            platform.processor() or platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, Pillow {Image.__version__}"
