"""Config and key loading: bad input gives one clear line and exit code 2; keys never leak."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project, save_frame

from ghibli_async.config import AnimeDetectorConfig, Config, YoloDetectorConfig, load_api_keys, load_config

REPO = Path(__file__).resolve().parents[1]


def error_line(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert project.cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("resize:\n  sise: 512\n", "resize.sise: unknown field"),
        ("resize:\n  size: big\n", "resize.size: Input should be a valid integer"),
        ("resize:\n  fit: stretch\n", "resize.fit: Input should be 'person_crop', 'center_crop', 'pad' or 'bucket'"),
        ("resize:\n  background: not-a-colour\n", "resize.background: not a colour"),
        ("caption:\n  models: []\n", "caption.models: List should have at least 1 item"),
        ("caption:\n  models:\n    - {name: m, rpm: 0, rpd: 1, tpm: 1}\n", "caption.models.0.rpm"),
        ("stages: [resize]\n", "stages: Input should be a valid dictionary"),
        ("caption:\n  min_words: 30\n  max_words: 20\n", "caption: min_words (30) is above max_words (20)"),
        (
            "caption:\n  request_timeout_s: 0.0005\n",
            "caption.request_timeout_s: Input should be greater than or equal to 1",
        ),
        ("caption:\n  models: [{name: m, provider: nowhere}]\n", "caption: models name providers not under"),
        ("caption:\n  models: [{name: m}]\n", "caption.models: m: a Gemini model needs its rpm, rpd, tpm"),
        ("resize: {size: [\n", "not valid YAML (line 2"),
        (
            "caption:\n  trigger: Totoro style\nresize: {size: 64}\ncaption:\n  concurrency: 2\n",
            "line 4, column 1: `caption` is given twice in one section (lines 1 and 4); YAML would keep only the "
            "second: merge the two into one",
        ),
        ("resize:\n  size: 64\n  size: 512\n", "`size` is given twice in one section (lines 2 and 3)"),
        ("caption:\n  verify: {model: gpt-judge}\n", "caption.verify.model gpt-judge is not in caption.models"),
        (
            "caption:\n  models: [{name: m, rpm: 1, rpd: 1, tpm: 1}]\n  verify: {model: m}\n",
            "caption.verify needs a model besides the verifier to write the captions",
        ),
        ("caption:\n  verify: {model: gemma-3-27b-it, share: 0}\n", "caption.verify.share: Input should be greater"),
        ("- a\n- b\n", "the top level must be a mapping"),
        (
            "caption:\n  backoff: {initial_s: 30, max_s: 10}\n",
            "caption.backoff: max_s (10.0) is below initial_s (30.0)",
        ),
        (
            "caption:\n  keys: [{env: A, project: paid}]\n  project_limits: {ghost: []}\n",
            "caption: project_limits for a project no key belongs to: ghost (caption.keys names: paid)",
        ),
        ("caption:\n  project_limits: {paid: []}\n", "project_limits for a project no key belongs to: paid"),
        ("caption:\n  providers: {gpu: {base_url: 'localhost:8000'}}\n", "is not an http(s) URL with a host"),
        ("caption:\n  base_url: gemini\n", "caption.base_url: 'gemini' is not an http(s) URL"),
        (
            "caption:\n  models: [{name: models/gemini-flash-latest, rpm: 5, rpd: 20, tpm: 250000}]\n",
            "without a '/'",
        ),
        ("filter:\n  detectors: [{name: haar}]\n", "filter.detectors.0: unknown detector name (use anime or yolo)"),
        ("filter:\n  detectors: [{name: anime, weights: x.pt}]\n", "filter.detectors.0.anime.weights: unknown"),
        (
            "filter:\n  detectors: [{name: yolo}, {weights: b.pt}]\n",
            "filter.detectors: each detector may be listed once",
        ),
    ],
)
def test_bad_config_is_one_line_naming_file_and_field(
    project: Project, capsys: pytest.CaptureFixture[str], yaml_text: str, expected: str
) -> None:
    project.config_path.write_text(yaml_text)
    err = error_line(project, capsys)
    assert str(project.config_path) in err
    assert expected in err


def test_missing_config_file(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.config_path.unlink()
    assert "config file not found" in error_line(project, capsys)


def test_missing_or_empty_input_folder(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no images or videos in" in error_line(project, capsys)
    project.frames.rmdir()
    assert "input folder not found" in error_line(project, capsys)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    config_path = tmp_path / "sub" / "c.yaml"
    config_path.write_text("paths:\n  input_dir: ../frames\n  work_dir: /abs/work\n")
    monkeypatch.chdir("/")

    paths = load_config(config_path).paths
    assert paths.input_dir.resolve() == tmp_path / "frames"
    assert paths.output_dir == tmp_path / "sub" / "data/ghibli/train"
    assert paths.work_dir == Path("/abs/work")


def test_cli_path_overrides_win(project: Project, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    save_frame(other / "a.jpg", (600, 600))
    assert project.cli("--input", str(other), "--work-dir", str(tmp_path / "w2"), "--skip-caption") == 0
    assert (tmp_path / "w2" / "resized" / "1.jpg").exists()


def test_example_config_documents_the_defaults() -> None:
    example = load_config(REPO / "config.yaml")
    defaults = Config()
    for section in ("stages", "extract", "filter", "resize", "caption", "export"):
        assert getattr(example, section) == getattr(defaults, section), section


def test_detectors_of_both_kinds(project: Project) -> None:
    """`name` may be left out for yolo; anime (or its old name, imgutils) picks its repo's default
    model per target."""
    project.write_config(
        "filter:\n  detectors:\n    - {weights: models/y.pt}\n    - {name: anime}\n"
        "    - {name: imgutils, target: person, model: person_detect_v1.1_m}\n"
    )
    yolo, head, person = project.config.filter.detectors
    assert isinstance(yolo, YoloDetectorConfig) and isinstance(head, AnimeDetectorConfig)
    assert isinstance(person, AnimeDetectorConfig)
    assert (yolo.key, yolo.weights) == ("yolo", str(project.root / "models" / "y.pt"))
    assert (head.key, head.repo, head.model_name) == (
        "anime-head",
        "deepghs/anime_head_detection",
        "head_detect_v2.0_n",
    )
    assert (person.key, person.model_name) == ("anime-person", "person_detect_v1.1_m")


def test_keys_from_env_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GEMINI_API_KEY_1=from-file-1\nGEMINI_API_KEY_3=from-file-3\n")
    environ = {"GEMINI_API_KEY_3": "from-env-3", "GEMINI_API_KEY_10": "k10", "GEMINI_API_KEY": "k-plain"}

    keys = load_api_keys(tmp_path, environ)
    assert [(k.label, k.secret) for k in keys] == [
        ("key#1", "from-file-1"),
        ("key#3", "from-env-3"),
        ("key#10", "k10"),
        ("key#0", "k-plain"),
    ]


def test_same_key_twice_counts_once(tmp_path: Path) -> None:
    keys = load_api_keys(tmp_path, {"GEMINI_API_KEY_1": "same", "GEMINI_API_KEY_2": "same", "GEMINI_API_KEY": "same"})
    assert [k.label for k in keys] == ["key#1"]


def test_keys_never_show_in_repr_or_fingerprint(tmp_path: Path) -> None:
    secret = "fake-key-not-a-real-key-0123456789abcdefg"
    (key,) = load_api_keys(tmp_path, {"GEMINI_API_KEY_1": secret})
    assert secret not in repr(key) and secret not in str(key)
    assert len(key.fingerprint) == 12 and key.fingerprint not in secret


def test_no_keys_at_all(tmp_path: Path) -> None:
    assert load_api_keys(tmp_path, {"GEMINI_API_KEY_1": "  "}) == []


def test_an_empty_gemini_base_url_means_google_as_null_does(project: Project) -> None:
    project.config_path.write_text('caption:\n  base_url: ""\n')
    assert project.config.caption.base_url is None
