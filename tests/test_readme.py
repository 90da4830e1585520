"""The README's config recipes are valid configs as written (a user pastes them as they are)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ghibli_async.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def recipes() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Caption with any vision model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


@pytest.mark.parametrize("recipe", recipes(), ids=lambda recipe: recipe.split("models:")[1].split(",")[0].strip(" -{"))
def test_every_recipe_is_a_valid_config(recipe: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(recipe, encoding="utf-8")
    caption = load_config(path).caption
    assert caption.models and all(m.provider == "gemini" or m.provider in caption.providers for m in caption.models)


def test_there_is_a_recipe_per_server() -> None:
    found = "\n".join(recipes())
    for url in ("localhost:8000", "localhost:11434", "localhost:1234", "localhost:8080", "openrouter.ai"):
        assert url in found


def test_the_first_run_is_one_short_section_a_newcomer_reads_top_to_bottom() -> None:
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^## .*", text, re.M).group() == "## First run"  # type: ignore[union-attr]
    section = text.split("## First run", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) <= 45
    for needed in (
        "python3 -m venv",
        'pip install -e ".[detect]"',
        "exit code 4",
        "data/ghibli/train",
        "--skip-filter",
    ):
        assert needed in section, needed
    config = yaml.safe_load((README.parent / "config.yaml").read_text(encoding="utf-8"))
    assert config["paths"]["output_dir"] == "data/ghibli/train" and config["paths"]["input_dir"] == "frames"
