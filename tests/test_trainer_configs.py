"""A layout read by its trainer's own config code, where a checkout of the trainer sits in
`.trainers/` (git-ignored: trainer code is never committed; README, "Development" says how to get
it). Skips, saying why, when the checkout or its lightweight dependencies are absent."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import Project
from test_export import CAPTIONS, captioned, output  # noqa: F401 - the fixture

TRAINERS = Path(__file__).resolve().parents[1] / ".trainers"


def trainer_source(name: str) -> Path:
    source = TRAINERS / name / "src"
    if not source.is_dir():
        pytest.skip(f"{name} is not checked out in {TRAINERS} (README, Development)")
    for needed in ("toml", "voluptuous", "torch", "safetensors"):
        pytest.importorskip(needed, reason=f"{name}'s config code imports {needed}")
    return source


def test_musubi_tuner_reads_the_musubi_layout(captioned: Project, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.syspath_prepend(str(trainer_source("musubi-tuner")))
    from musubi_tuner.dataset.config_utils import (
        BlueprintGenerator,
        ConfigSanitizer,
        generate_dataset_group_by_blueprint,
        load_user_config,
    )

    captioned.write_config("export:\n  layouts: [imagefolder, musubi]\n")
    assert captioned.cli("export") == 0
    user_config = load_user_config(str(output(captioned) / "musubi_dataset.toml"))
    blueprint = BlueprintGenerator(ConfigSanitizer()).generate(user_config, argparse.Namespace(), architecture="wan")
    (dataset,) = generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets
    assert dataset.enable_bucket and dataset.bucket_no_upscale
    source = dataset.datasource
    assert len(source) == len(CAPTIONS)
    read = [source.get_image_data(i) for i in range(len(source))]
    assert sorted(caption for _, _, caption, *_ in read) == sorted(CAPTIONS.values())


def test_kohya_sd_scripts_reads_the_kohya_layout(captioned: Project, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Its config code imports transformers, diffusers and accelerate at the versions it pins: run
    this in an environment of its own (README, Development)."""
    source = TRAINERS / "sd-scripts"
    if not (source / "library" / "config_util.py").is_file():
        pytest.skip(f"sd-scripts is not checked out in {TRAINERS} (README, Development)")
    monkeypatch.syspath_prepend(str(source))
    try:
        from library import config_util
    except ImportError as exc:
        pytest.skip(f"sd-scripts' config code does not import here ({exc}): it wants its own pinned packages")

    captioned.write_config("export:\n  layouts: [imagefolder, kohya]\n")
    assert captioned.cli("export") == 0
    user_config = config_util.load_user_config(str(output(captioned) / "kohya_dataset.toml"))
    generator = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, False, True))
    blueprint = generator.generate(user_config, argparse.Namespace())
    train, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    (dataset,) = train.datasets
    assert dataset.enable_bucket and dataset.bucket_no_upscale
    (subset,) = dataset.subsets
    assert subset.keep_tokens == 1 and subset.caption_extension == ".txt"
    captions = {info.caption for info in dataset.image_data.values()}
    assert captions == set(CAPTIONS.values())
