"""ghibli_async: film frames in, a captioned Stable Diffusion LoRA dataset (imagefolder) out.

In a notebook or script::

    import ghibli_async
    report = ghibli_async.run("config.yaml")   # works inside Jupyter's running event loop too

From async code::

    from ghibli_async import Pipeline, load_config
    report = await Pipeline(load_config("config.yaml")).run()
"""

from ghibli_async.config import Config, load_api_keys, load_config
from ghibli_async.errors import ConfigError, UserError
from ghibli_async.pipeline import Pipeline, RunReport, run

__all__ = [
    "Config",
    "ConfigError",
    "Pipeline",
    "RunReport",
    "UserError",
    "load_api_keys",
    "load_config",
    "run",
]
