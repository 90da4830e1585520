"""ghibli_async: film frames in, a captioned Stable Diffusion LoRA dataset (imagefolder) out.

In a notebook or script::

    import ghibli_async
    report = ghibli_async.run("config.yaml")   # works inside Jupyter's running event loop too

The review page beside it, from a cell (it serves from a thread of its own)::

    page = ghibli_async.review_page("config.yaml")   # shows its link; page.stop() ends it

From async code::

    from ghibli_async import Pipeline, load_config
    report = await Pipeline(load_config("config.yaml")).run()
"""

from importlib import import_module
from typing import Any

# Exported names and their modules, imported on first use: worker processes that only need
# `ghibli_async.imaging` then do not pay for google-genai, PyAV and aiohttp (0.7 s on 2 cores).
_EXPORTS = {
    "Config": "ghibli_async.config",
    "load_api_keys": "ghibli_async.config",
    "load_caption_keys": "ghibli_async.config",
    "load_config": "ghibli_async.config",
    "ConfigError": "ghibli_async.errors",
    "UserError": "ghibli_async.errors",
    "Pipeline": "ghibli_async.pipeline",
    "RunReport": "ghibli_async.pipeline",
    "run": "ghibli_async.pipeline",
    "review_page": "ghibli_async.review",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ghibli_async' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
