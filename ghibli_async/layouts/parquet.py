"""Parquet shards (`parquet/part-00000-of-00003.parquet`, …; not `train-…`: that name would make
`datasets` take them for the imagefolder's train split): the images' bytes and their captions,
with the Hugging Face features in the schema, so `datasets.load_dataset("parquet", data_dir=…)`
gives decoded images and `push_to_hub` takes the folder as it is. Needs pyarrow."""

from __future__ import annotations

import json
import re
from typing import Any

from ghibli_async.config import Config
from ghibli_async.errors import UserError
from ghibli_async.layouts import Folders, Layout
from ghibli_async.state.results import CaptionedImage

FOLDER = "parquet"
_FEATURES = {"info": {"features": {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"}}}}


class ParquetWriter:
    def __init__(self, folders: Folders, config: Config) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(
                "the parquet layout needs pyarrow: pip install pyarrow (or drop it from export.layouts)"
            ) from None
        self._folder = folders.staging / FOLDER
        self._folder.mkdir()
        self._rows_per_shard = config.export.parquet_rows_per_shard
        self._rows: list[dict[str, Any]] = []
        self._shards: list[str] = []

    def add(self, item: CaptionedImage) -> None:
        image = (self._folder.parent / f"{item.number}.jpg").read_bytes()
        self._rows.append({"image": {"bytes": image, "path": f"{item.number}.jpg"}, "text": item.caption})
        if len(self._rows) >= self._rows_per_shard:
            self._write_shard()

    def close(self) -> None:
        if self._rows:
            self._write_shard()
        for index, name in enumerate(self._shards):  # the shard count is known only now
            (self._folder / name).rename(self._folder / f"part-{index:05d}-of-{len(self._shards):05d}.parquet")

    def _write_shard(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        schema = pa.schema([("image", image), ("text", pa.string())], metadata={"huggingface": json.dumps(_FEATURES)})
        name = f"shard-{len(self._shards):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(self._rows, schema=schema), self._folder / name)
        self._shards.append(name)
        self._rows = []


LAYOUT = Layout("parquet", re.compile(re.escape(FOLDER)), ParquetWriter)
