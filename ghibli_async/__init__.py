"""ghibli_async: film frames in, a captioned Stable Diffusion LoRA dataset (imagefolder) out.

In a notebook or script::

    import ghibli_async
    report = ghibli_async.run("config.yaml")   # works inside Jupyter's running event loop too

From async code, `await ghibli_async.run_pipeline(load_config(path), load_api_keys(folder))`.
"""

from ghibli_async.config import Config, load_api_keys, load_config
from ghibli_async.errors import ConfigError, UserError
from ghibli_async.pipeline import RunReport, run, run_pipeline

__all__ = [
    "Config",
    "ConfigError",
    "RunReport",
    "UserError",
    "load_api_keys",
    "load_config",
    "run",
    "run_pipeline",
]
