"""`avsc-features verify`: stage one's shards checked against the schema their config implies.

Storage checks files against a schema (:func:`avsc_pipeline.storage.index.verify_shards`);
stage one knows which schema a shard's feature and augmentation configs imply.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from avsc_pipeline.sections.features import augment_config_of, feature_config_of
from avsc_pipeline.storage.index import verify_shards
from avsc_pipeline.storage.shards import Column, augment_columns, stage_one_columns


def shard_schema(attrs: Dict[str, Any], source: str) -> Dict[str, Column]:
    """The columns a shard with these attributes must hold (stage one's, or an augmented one's)."""
    config = feature_config_of(attrs, source=source)
    if "video_source" in attrs:
        return augment_columns(config, augment_config_of(attrs, source=source), attrs["schema_version"])
    return stage_one_columns(config, with_video="video" in attrs["datasets"], schema_version=attrs["schema_version"])


def verify_folder(folder: "str | os.PathLike[str]") -> List[str]:
    """Check every shard of a folder (see :func:`~avsc_pipeline.storage.index.verify_shards`);
    returns one message per problem, empty when all is good."""
    return verify_shards(folder, shard_schema)
