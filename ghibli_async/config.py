"""The config model tree, loaded from YAML, and the API keys, loaded from the environment or `.env`.

Nothing else in the package reads YAML or `os.environ`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values
from PIL import ImageColor
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ghibli_async import workdir
from ghibli_async.errors import ConfigError, UserError

DEFAULT_PROMPT = (
    "Caption this frame from an animated film for training an image model. Write one single "
    "descriptive phrase, its parts separated by commas, in simple English (CEFR A2-B1), starting "
    "with '{trigger}'. Describe each person: apparent age, gender, facial expression, clothing and "
    "posture; then the background, the light and the mood. Never name a character, a film or a "
    "studio. 20 to 30 words. No full stop at the end, no line breaks, no quotes, no markdown."
)


GEMINI = "gemini"  # the built-in provider: Google's Gemini API, keys from GEMINI_API_KEY_N


class _Section(BaseModel):
    """Every section rejects unknown keys, so a typo in the YAML is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    input_dir: Path = Path("frames")
    output_dir: Path = Path("data/ghibli/train")
    work_dir: Path = Path("data/ghibli/work")

    def resolved_against(self, base_dir: Path) -> PathsConfig:
        """Relative paths in a config file mean relative to that file's folder, not the cwd."""
        return PathsConfig(**{name: base_dir / Path(value).expanduser() for name, value in self})


class StagesConfig(_Section):
    extract: bool = True
    filter: bool = True
    resize: bool = True
    caption: bool = True


class ExtractConfig(_Section):
    """Frames from the video files in the input folder (mp4, mkv, webm, mov, avi)."""

    mode: Literal["interval", "shots"] = "interval"
    every_s: float = Field(5.0, gt=0)  # interval mode: one frame every this many seconds
    exact: bool = True  # interval mode: false takes the nearest keyframe instead (much faster)
    skip_start_s: float = Field(0.0, ge=0)  # opening credits
    skip_end_s: float = Field(0.0, ge=0)  # ending credits
    crop: Literal["trim_bars", "center_square", "none"] = "trim_bars"
    min_shot_s: float = Field(1.0, gt=0)  # shots mode: shorter shots give no frame
    max_per_shot: int = Field(1, ge=1)  # shots mode: more frames of a long shot, every_s apart
    scene_change: float = Field(0.07, gt=0, lt=1)  # shots mode: mean colour difference (0-1) that starts a shot


class ResizeConfig(_Section):
    size: int = Field(512, ge=64, le=4096)
    # person_crop: the square keeping the most of the stored person boxes; center_crop; pad (whole
    # frame on `background`); bucket: the frame's own aspect, `size` as the bucket side (1024: SDXL)
    fit: Literal["person_crop", "center_crop", "pad", "bucket"] = "person_crop"

    @property
    def signature(self) -> str:
        """What a resized file depends on: a change re-resizes (and re-exports) every frame."""
        return f"{self.fit}:{self.size}" + (f":{self.background}" if self.fit == "pad" else "")

    background: tuple[int, int, int] = (255, 255, 255)
    allow_upscale: bool = False
    quality: int = Field(95, ge=1, le=100)
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:4:4"
    workers: int | None = Field(None, ge=1)

    @field_validator("background", mode="before")
    @classmethod
    def _parse_colour(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return ImageColor.getrgb(value)[:3]
            except ValueError:
                raise ValueError(f"not a colour: {value!r} (use a name, '#rrggbb' or [r, g, b])") from None
        return value


class _DetectorSection(_Section):
    confidence: float = Field(0.15, gt=0, lt=1)  # a box at or above this counts as a person
    image_size: int = Field(640, ge=32)  # the shared downscaled copy this detector looks at
    batch_size: int = Field(8, ge=1)  # frames handed to the detector at a time


class YoloDetectorConfig(_DetectorSection):
    """ultralytics YOLO, COCO class `person`."""

    name: Literal["yolo"] = "yolo"
    weights: str = "yolo11n.pt"  # a name ultralytics can fetch when online, or a file path
    device: str = "auto"  # auto (cuda, mps, cpu), or a torch device name

    @property
    def key(self) -> str:
        """What this detector's boxes are stored under."""
        return "yolo"


class AnimeDetectorConfig(_DetectorSection):
    """deepghs' YOLO models trained on anime, run with onnxruntime: `head`s (what a person in a film
    frame shows most often, even small or from behind) or whole `person` bodies. ONNX files from
    the Hugging Face repos deepghs/anime_{target}_detection, fetched once, then read from the cache.
    `imgutils` is accepted as the name too (the package these models came through before)."""

    name: Literal["anime", "imgutils"]
    target: Literal["person", "head"] = "head"
    model: str | None = None  # a model of deepghs/anime_{target}_detection; None: the one below

    @property
    def key(self) -> str:
        return f"anime-{self.target}"

    @property
    def repo(self) -> str:
        return f"deepghs/anime_{self.target}_detection"

    @property
    def model_name(self) -> str:
        return self.model or {"person": "person_detect_v1.1_n", "head": "head_detect_v2.0_n"}[self.target]


def _detector_kind(value: Any) -> str:
    """`name` picks the detector's fields; it may be left out for the default, yolo."""
    if isinstance(value, Mapping):
        return str(value.get("name", "yolo"))
    return getattr(value, "name", "yolo")


DetectorConfig = Annotated[
    Annotated[YoloDetectorConfig, Tag("yolo")]
    | Annotated[AnimeDetectorConfig, Tag("anime")]
    | Annotated[AnimeDetectorConfig, Tag("imgutils")],
    Discriminator(
        _detector_kind,
        custom_error_type="detector_name",
        custom_error_message="unknown detector name (use anime or yolo)",
    ),
]


class DarkCheck(_Section):
    enabled: bool = True
    max_brightness: float = Field(0.08, ge=0, le=1)  # mean luma (0-1) at or below: a black/fade frame
    min_contrast: float = Field(0.03, ge=0, le=1)  # luma standard deviation below: a flat frame


class BlurCheck(_Section):
    enabled: bool = True
    min_sharpness: float = Field(0.0008, ge=0)  # variance of the Laplacian on a 256 px grey copy (0-1 scale)


class DuplicateCheck(_Section):
    enabled: bool = True
    max_distance: int = Field(6, ge=0, le=32)  # perceptual-hash bits that may differ (of 64)


def _default_detectors() -> list[DetectorConfig]:
    """Anime heads and anime bodies, either keeps a frame: measured on real Ghibli frames, a
    photo-trained YOLO found a person in 65 % of the frames that have one (README, "The person filter")."""
    return [AnimeDetectorConfig(name="anime", target="head"), AnimeDetectorConfig(name="anime", target="person")]


class FilterConfig(_Section):
    mode: Literal["any", "all"] = "any"  # keep a frame when any (or all) detectors find a person
    min_box_fraction: float = Field(0.0, ge=0, lt=1)  # smallest box area counted, as a share of the frame
    detectors: list[DetectorConfig] = Field(default_factory=_default_detectors, min_length=1)
    dark: DarkCheck = DarkCheck()
    blur: BlurCheck = BlurCheck()
    duplicates: DuplicateCheck = DuplicateCheck()

    @field_validator("detectors")
    @classmethod
    def _one_of_each(cls, detectors: list[DetectorConfig]) -> list[DetectorConfig]:
        keys = [detector.key for detector in detectors]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"each detector may be listed once, but {', '.join(repeated)} is listed twice")
        return detectors

    def resolved_against(self, base_dir: Path) -> FilterConfig:
        """YOLO weights given as a path, or found next to the config, are read from the config's
        folder; a bare name nobody has locally stays a name for ultralytics to fetch."""
        detectors = []
        for detector in self.detectors:
            if isinstance(detector, YoloDetectorConfig):
                local = base_dir / Path(detector.weights).expanduser()
                if "/" in detector.weights or local.exists():
                    detector = detector.model_copy(update={"weights": str(local)})
            detectors.append(detector)
        return self.model_copy(update={"detectors": detectors})


class ModelQuota(_Section):
    """One model, its provider and its limits per project or key (requests/minute, requests/day,
    tokens/minute; left out: no such limit), plus settings of its own."""

    name: str = Field(min_length=1)
    provider: str = Field(GEMINI, min_length=1)  # `gemini`, or a name under caption.providers
    rpm: int | None = Field(None, ge=1)
    rpd: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_in_flight: int | None = Field(None, ge=1)  # a local server: at most this many requests at once
    images_per_request: int = Field(1, ge=1, le=32)  # frames packed in one request (one answer: a JSON array)
    prompt: str | None = Field(None, min_length=1)  # this model only; overrides caption.prompt
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, ge=16)
    thinking_budget: int | None = Field(None, ge=-1)  # this model only; overrides caption.thinking_budget
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None


class ProviderConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio, llama.cpp's server,
    OpenRouter, OpenAI) and the environment variables that hold its keys (none: a local server)."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(min_length=1)
    api_key_env: list[str] = Field(default_factory=list)

    @field_validator("base_url")
    @classmethod
    def _a_url(cls, url: str) -> str:
        return http_url(url)


def http_url(url: str) -> str:
    """An endpoint must be an http(s) URL with a host: anything else fails on every request."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host (for example http://localhost:8000/v1)")
    return url


class KeyAssignment(_Section):
    """Which environment variable holds a key, and which project it belongs to (keys of one
    project share its quota)."""

    env: str = Field(min_length=1)
    project: str | None = None


class BackoffConfig(_Section):
    """Waits after a rate limit that names no retry delay, and between retries of server errors."""

    initial_s: float = Field(5.0, gt=0)
    max_s: float = Field(80.0, gt=0)
    multiplier: float = Field(2.0, ge=1)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) is below initial_s ({self.initial_s}): raise max_s")
        return self


class SafetySetting(_Section):
    category: str = Field(min_length=1)
    threshold: str = Field(min_length=1)


def _default_safety() -> list[SafetySetting]:
    categories = ("HARASSMENT", "HATE_SPEECH", "SEXUALLY_EXPLICIT", "DANGEROUS_CONTENT")
    return [SafetySetting(category=f"HARM_CATEGORY_{name}", threshold="BLOCK_NONE") for name in categories]


class CaptionChecks(_Section):
    """Which named checks run on captions (README, "Caption checks"); each is on by default."""

    word_count: bool = True
    banned_words: bool = True
    repetition: bool = True
    refusal: bool = True
    proper_name: bool = True
    language: bool = True
    generic: bool = True
    length: bool = True  # over the dataset: far outside its own lengths
    duplicate: bool = True  # over the dataset: the same caption on several frames


class VerifyConfig(_Section):
    """`caption.verify`: a model of another family is shown `share` of the frames with their
    captions and says whether each caption matches (README, "Caption checks")."""

    model: str = Field(min_length=1)  # one of caption.models: its requests spend its quota
    share: float = Field(0.1, gt=0, le=1)


class CaptionConfig(_Section):
    trigger: str = Field("Ghibli style", min_length=1)
    separator: str = Field(", ", min_length=1)  # between the trigger and the rest of the caption
    prompt: str = Field(DEFAULT_PROMPT, min_length=1)
    models: list[ModelQuota] = Field(
        default_factory=lambda: [
            # Google's free tier for one project, mid-2026 (config.yaml gives the sources).
            ModelQuota(name="gemini-flash-latest", rpm=5, rpd=20, tpm=250_000),
            ModelQuota(name="gemini-flash-lite-latest", rpm=15, rpd=500, tpm=250_000),
            ModelQuota(name="gemma-3-27b-it", rpm=30, rpd=14_400, tpm=15_000),
        ],
        min_length=1,
    )
    keys: list[KeyAssignment] | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    project_limits: dict[str, list[ModelQuota]] = Field(default_factory=dict)
    route: Literal["model_first", "key_first"] = "model_first"
    even_pacing: bool = True  # one request every 60 s / rpm per bucket, not a burst at each minute's start
    concurrency: int = Field(8, ge=1, le=256)
    base_url: str | None = None
    request_timeout_s: float = Field(60.0, ge=1)  # under a second no caption comes back (and ms round to 0)
    temperature: float | None = Field(0.4, ge=0, le=2)
    max_output_tokens: int = Field(200, ge=16)
    thinking_budget: int | None = Field(None, ge=-1)
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None
    safety: list[SafetySetting] = Field(default_factory=_default_safety)
    max_attempts: int = Field(5, ge=1)
    blocked_retries: int = Field(1, ge=0)
    min_words: int = Field(8, ge=1)
    max_words: int = Field(60, ge=1)
    banned_words: list[str] = Field(default_factory=list)
    checks: CaptionChecks = CaptionChecks()
    review_doubt: float = Field(0.7, gt=0, le=1)  # a caption this doubtful is asked again once, then needs review
    language: str = "en"  # the captions' language (the language check knows English)
    identity_share: float = Field(0.8, gt=0, le=1)  # phrases in this share of captions belong in the trigger
    verify: VerifyConfig | None = None  # off by default
    backoff: BackoffConfig = BackoffConfig()

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelQuota]) -> list[ModelQuota]:
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is listed twice: {names}")
        for model in models:
            missing = [limit for limit in ("rpm", "rpd", "tpm") if getattr(model, limit) is None]
            if model.provider == GEMINI and missing:
                raise ValueError(f"{model.name}: a Gemini model needs its {', '.join(missing)} (see AI Studio)")
            if model.provider == GEMINI and "/" in model.name:
                raise ValueError(
                    f"{model.name}: write a Gemini model's name alone, without a '/' (gemini-flash-latest)"
                )
        return models

    @field_validator("base_url")
    @classmethod
    def _a_url(cls, url: str | None) -> str | None:
        return http_url(url) if url else None  # empty: Google's (or $GOOGLE_GEMINI_BASE_URL), as null

    @field_validator("providers")
    @classmethod
    def _gemini_is_built_in(cls, providers: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        if GEMINI in providers:
            raise ValueError("`gemini` is the built-in provider: set caption.base_url and caption.keys instead")
        return providers

    @property
    def captioners(self) -> list[ModelQuota]:
        """The models that caption: all but the verifier (`verify.model` only judges)."""
        judge = self.verify.model if self.verify else None
        return [model for model in self.models if model.name != judge]

    @model_validator(mode="after")
    def _verifier_is_a_caption_model(self) -> CaptionConfig:
        names = [model.name for model in self.models]
        if self.verify is not None and self.verify.model not in names:
            raise ValueError(
                f"caption.verify.model {self.verify.model} is not in caption.models ({', '.join(names)}): "
                "list it there with its quota (its requests spend that quota)"
            )
        if self.verify is not None and len(names) < 2:
            raise ValueError("caption.verify needs a model besides the verifier to write the captions")
        return self

    @model_validator(mode="after")
    def _word_bounds_meet(self) -> CaptionConfig:
        if self.min_words > self.max_words:
            raise ValueError(
                f"min_words ({self.min_words}) is above max_words ({self.max_words}): no caption would pass"
            )
        return self

    @model_validator(mode="after")
    def _limits_for_known_projects(self) -> CaptionConfig:
        """A project is what `load_caption_keys` makes of the keys: a caption.keys project (or
        key#N), a keyless provider's name, or `<provider>:key#N`."""
        endpoints = [rf"{re.escape(name)}(:key#\d+)?" for name in self.providers]
        if self.keys is None:
            patterns, known = [r"key#\d+", *endpoints], "without caption.keys, each key is its own project: key#1, …"
        else:
            projects = sorted({a.project or f"key#{n}" for n, a in enumerate(self.keys, start=1)})
            patterns, known = [*map(re.escape, projects), *endpoints], f"caption.keys names: {', '.join(projects)}"
        unknown = [name for name in self.project_limits if not any(re.fullmatch(p, name) for p in patterns)]
        if unknown:
            raise ValueError(f"project_limits for a project no key belongs to: {', '.join(unknown)} ({known})")
        return self

    @model_validator(mode="after")
    def _providers_exist(self) -> CaptionConfig:
        unknown = sorted({m.provider for m in self.models if m.provider != GEMINI and m.provider not in self.providers})
        if unknown:
            raise ValueError(f"models name providers not under caption.providers: {', '.join(unknown)}")
        return self

    def model(self, name: str) -> ModelQuota:
        return next(model for model in self.models if model.name == name)


LayoutName = Literal["imagefolder", "kohya", "ai_toolkit", "musubi", "parquet"]


class ExportConfig(_Section):
    """Which trainers' layouts the output folder holds (the images are shared; README, "Layouts")."""

    layouts: list[LayoutName] = Field(default_factory=lambda: list[LayoutName](["imagefolder"]), min_length=1)
    trigger_placeholder: bool = False  # ai_toolkit: captions start with [trigger] (ai-toolkit's trigger_word)
    parquet_rows_per_shard: int = Field(1000, ge=1)
    kohya_txt: bool = False  # the earlier name for N.txt captions: adds the kohya layout

    @model_validator(mode="before")
    @classmethod
    def _kohya_txt_adds_kohya(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kohya_txt"):
            layouts = list(data.get("layouts") or ["imagefolder"])
            return {**data, "layouts": layouts if "kohya" in layouts else [*layouts, "kohya"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExportConfig:
        if len(set(self.layouts)) < len(self.layouts):
            raise ValueError(f"each layout may be listed once: {self.layouts}")
        if self.trigger_placeholder and "kohya" in self.layouts:
            raise ValueError(
                "trigger_placeholder writes [trigger] into the N.txt captions kohya reads as they are: drop one of them"
            )
        return self


class Config(_Section):
    """The whole config; `base_dir` is the config file's folder (where `.env` is looked for)."""

    paths: PathsConfig = PathsConfig()
    stages: StagesConfig = StagesConfig()
    extract: ExtractConfig = ExtractConfig()
    filter: FilterConfig = FilterConfig()
    resize: ResizeConfig = ResizeConfig()
    caption: CaptionConfig = CaptionConfig()
    export: ExportConfig = ExportConfig()
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def state_path(self) -> Path:
        return self.paths.work_dir / workdir.STATE_FILE

    @property
    def extracted_dir(self) -> Path:
        return self.paths.work_dir / workdir.EXTRACTED

    @property
    def resized_dir(self) -> Path:
        return self.paths.work_dir / workdir.RESIZED


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config; relative paths in it resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (start from the project's config.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader that refuses repeated keys
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_describe_yaml_error(exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (paths, resize, …)")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    base_dir = path.resolve().parent
    config = config.model_copy(
        update={"paths": config.paths.resolved_against(base_dir), "filter": config.filter.resolved_against(base_dir)}
    )
    config._base_dir = base_dir
    return config


def with_overrides(config: Config, **paths: Path | None) -> Config:
    """Return the config with the CLI's path overrides (already absolute or relative to the cwd)."""
    chosen = {name: Path(value).resolve() for name, value in paths.items() if value is not None}
    return config.model_copy(update={"paths": config.paths.model_copy(update=chosen)})


def with_stages(config: Config, **enabled: bool) -> Config:
    """Return the config with some stages switched off for this run."""
    return config.model_copy(update={"stages": config.stages.model_copy(update=enabled)})


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. `resize.size: Input should be a valid integer (got 'x')`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field (check the spelling against config.yaml)")
            continue
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word: a pasted recipe's second `caption:`
    would silently replace the user's own. Here a repeated key is an error naming its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"`{key}` is given twice in one section (lines {seen[key]} and {line}); YAML would keep "
                    "only the second: merge the two into one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


@dataclass(frozen=True)
class ApiKey:
    """An API key (empty for a local server). Only `label` (`key#N`, `<provider>:key#N` or the
    provider's name) and `fingerprint` may ever be shown or stored."""

    label: str
    env_name: str
    secret: str = field(repr=False)
    project: str = ""  # who the limits are counted for: keys of one project share its buckets
    provider: str = GEMINI

    @property
    def fingerprint(self) -> str:
        """A short hash that tells keys apart in the state without storing them."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:12]


_NUMBERED_KEY = re.compile(r"GEMINI_API_KEY_(\d+)")


def required_caption_keys(config: Config) -> list[ApiKey]:
    """The configured API keys, or a line saying where to put them."""
    keys = load_caption_keys(config)
    if not keys:
        raise UserError(
            "no API keys: set GEMINI_API_KEY_1 (GEMINI_API_KEY_2, …) in the environment or in .env next to the config"
        )
    return keys


def load_caption_keys(config: Config, environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """Every key of every provider: Gemini's (`load_api_keys`), then each OpenAI-compatible
    provider's `api_key_env` entries as `<provider>:key#N` (each its own project), or, for a
    provider without keys (a local server), one empty key named after the provider."""
    keys = load_api_keys(config.base_dir, environ, assignments=config.caption.keys)
    merged = _environment(config.base_dir, environ)
    for name, provider in config.caption.providers.items():
        if not provider.api_key_env:
            keys.append(ApiKey(label=name, env_name="", secret="", project=name, provider=name))
        for n, env_name in enumerate(provider.api_key_env, start=1):
            secret = merged.get(env_name, "").strip()
            if secret:
                label = f"{name}:key#{n}"
                keys.append(ApiKey(label=label, env_name=env_name, secret=secret, project=label, provider=name))
    return keys


def _environment(env_dir: Path, environ: Mapping[str, str] | None) -> dict[str, str]:
    """The `.env` file in `env_dir` under the environment (which wins)."""
    env_file = env_dir / ".env"
    try:
        from_file = {k: v for k, v in dotenv_values(env_file).items() if v} if env_file.is_file() else {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{env_file}: cannot read the .env file ({exc})") from None
    return {**from_file, **(os.environ if environ is None else environ)}


def load_api_keys(
    env_dir: Path, environ: Mapping[str, str] | None = None, assignments: list[KeyAssignment] | None = None
) -> list[ApiKey]:
    """Collect the keys from the environment and from a `.env` file in `env_dir` (the environment
    wins). Without `assignments`: every `GEMINI_API_KEY_N` as `key#N` (and a plain `GEMINI_API_KEY`
    as `key#0`), each its own project. With them: the N-th entry is `key#N`, in its named project.
    The same key twice counts once."""
    merged = _environment(env_dir, environ)
    candidates: Sequence[tuple[str, str, str | None]]  # label, variable, project
    if assignments is None:
        numbered = sorted((int(m.group(1)), name) for name in merged if (m := _NUMBERED_KEY.fullmatch(name)))
        candidates = [(f"key#{n}", name, None) for n, name in numbered] + [("key#0", "GEMINI_API_KEY", None)]
    else:
        candidates = [(f"key#{n}", a.env, a.project) for n, a in enumerate(assignments, start=1)]
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for label, name, project in candidates:
        secret = merged.get(name, "").strip()
        if secret and secret not in seen:
            seen.add(secret)
            keys.append(ApiKey(label=label, env_name=name, secret=secret, project=project or label))
    return keys
