"""Every layout written from the same state into the same folder, each checked against its
trainer's documented format (kohya sd-scripts' dataset config, ai-toolkit's captions, musubi-tuner's
JSONL image dataset) and, for imagefolder and parquet, read by `datasets` itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from test_export import CAPTIONS, captioned, output  # noqa: F401 - the fixture

from ghibli_async.layouts.kohya import keep_tokens

tomllib = pytest.importorskip("tomllib", reason="reading TOML needs Python 3.11 or newer")

ALL = "export:\n  layouts: [imagefolder, kohya, musubi, parquet]\n"


def test_kohya_reads_its_captions_and_a_dataset_config_with_buckets(captioned: Project) -> None:  # noqa: F811
    captioned.write_config(ALL)
    assert captioned.cli("export") == 0
    out = output(captioned)
    assert {n: out.joinpath(f"{n}.txt").read_text(encoding="utf-8") for n in CAPTIONS} == CAPTIONS
    config = tomllib.loads(out.joinpath("kohya_dataset.toml").read_text(encoding="utf-8"))
    general, (dataset,) = config["general"], config["datasets"]
    assert general["enable_bucket"] and general["bucket_no_upscale"] and general["caption_extension"] == ".txt"
    assert general["keep_tokens"] == 1  # "Ghibli style" is the first comma-separated token: never shuffled
    (subset,) = dataset["subsets"]
    assert subset["image_dir"] == str(out) and dataset["resolution"] == 512
    assert keep_tokens("Ghibli style, film still") == 2


def test_musubi_reads_a_jsonl_of_image_paths_and_captions(captioned: Project) -> None:  # noqa: F811
    captioned.write_config(ALL)
    captioned.cli("export")
    out = output(captioned)
    rows = [json.loads(line) for line in out.joinpath("musubi.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(Path(row["image_path"]).name, row["caption"]) for row in rows] == [
        (f"{n}.jpg", text) for n, text in CAPTIONS.items()
    ]
    assert all(Path(row["image_path"]).is_file() for row in rows)
    config = tomllib.loads(out.joinpath("musubi_dataset.toml").read_text(encoding="utf-8"))
    (dataset,) = config["datasets"]
    assert dataset["image_jsonl_file"] == str(out / "musubi.jsonl") and dataset["cache_directory"]
    assert config["general"]["resolution"] == [512, 512] and config["general"]["bucket_no_upscale"]


def loaded(kind: str, folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The folder as `datasets` reads it (offline), its train split."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    return load_dataset(kind, data_dir=str(folder), split="train", cache_dir=str(cache))


def test_parquet_shards_load_as_images_and_text(
    captioned: Project,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captioned.write_config(ALL + "  parquet_rows_per_shard: 2\n")
    captioned.cli("export")
    shards = sorted(p.name for p in (output(captioned) / "parquet").iterdir())
    assert shards == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    dataset = loaded("parquet", output(captioned) / "parquet", tmp_path / "hf", monkeypatch)
    assert sorted(dataset["text"]) == sorted(CAPTIONS.values())
    assert {(row["image"].mode, row["image"].size) for row in dataset} == {("RGB", (512, 512))}


def test_the_imagefolder_still_loads_beside_every_other_layout(
    captioned: Project,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captioned.write_config(ALL)
    captioned.cli("export")
    dataset = loaded("imagefolder", output(captioned), tmp_path / "hf", monkeypatch)
    assert sorted(dataset["text"]) == sorted(CAPTIONS.values())


def test_ai_toolkit_captions_with_the_trigger_placeholder(captioned: Project) -> None:  # noqa: F811
    captioned.write_config("export:\n  layouts: [ai_toolkit]\n  trigger_placeholder: true\n")
    captioned.cli("export")
    out = output(captioned)
    assert out.joinpath("1.txt").read_text(encoding="utf-8") == CAPTIONS[1].replace("Ghibli style", "[trigger]", 1)
    assert not out.joinpath("metadata.jsonl").exists()  # only the layouts asked for


def test_dropping_a_layout_removes_its_files(captioned: Project) -> None:  # noqa: F811
    captioned.write_config(ALL)
    captioned.cli("export")
    captioned.write_config("")
    captioned.cli("export")
    names = sorted(p.name for p in output(captioned).iterdir())
    assert names == [".ghibli_async.jsonl", "1.jpg", "3.jpg", "4.jpg", "metadata.jsonl"]


def test_a_placeholder_kohya_would_read_literally_is_refused(project: Project, capsys) -> None:
    project.write_config("export:\n  layouts: [kohya]\n  trigger_placeholder: true\n")
    assert project.cli("export") == 2
    assert "trigger_placeholder writes [trigger]" in capsys.readouterr().err
