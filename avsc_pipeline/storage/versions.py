"""Schema versions of shards and indexes, and the migration of earlier ones where they are read.

A shard's `schema_version` attribute (and an index's `schema_version` key) says which version
wrote it. Readers (:func:`~avsc_pipeline.storage.shards.read_attrs`,
:func:`~avsc_pipeline.storage.index.load_index`) bring the attributes of an earlier version to
today's meaning on purpose, one function per version, and log that they did; `schema_version`
itself keeps the stored value, because it also says which columns the file holds, and so does
`config_hash`, which names the artifact (cached audio statistics refer to it).

========  ================================================================================
version   what changed
========  ================================================================================
1         the first schema
2         columns `audio_file` and `video_file` (the clip's files as the manifest lists them);
          configs written with every key (version 1 left out the keys a config section gained
          with the authors' definitions whenever all of them held their earlier values)
3         `feature_config.audio` (`logmel` or `waveform`) and `waveform_rate`: with `waveform`
          the `audio` column holds each segment's resampled waveform, `(N, 2, samples)`;
          every earlier shard holds log-mel features (`audio: logmel`)
========  ================================================================================

Nothing here knows the config classes (storage sits below them): the earlier values are data
(:mod:`avsc_pipeline.earlier`, shared with the checkpoint reader).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, Set

from avsc_pipeline import earlier

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_LOGGED: Set[str] = set()  # files whose migration was logged (once per file and process)


def fill_earlier(config: Dict[str, Any], values: Dict[str, Any], dropped: tuple = ()) -> Dict[str, Any]:
    """`config` with each key of `values` it lacks set to its earlier value, and the keys no
    section has any more (`dropped`) left out (a new dict)."""
    return {k: v for k, v in {**values, **config}.items() if k not in dropped}


def _from_version_1(record: Dict[str, Any]) -> Dict[str, Any]:
    """Version 1 -> 2: the configs' left-out keys get their earlier values.

    `record` is a shard's decoded attributes (`augment_config` as JSON text) or an index
    (`augment_config` as a mapping); a missing `augment_config` stays missing.
    """
    out = dict(record)
    out["feature_config"] = fill_earlier(record["feature_config"], earlier.FEATURES)
    augment = record.get("augment_config")
    if isinstance(augment, str):
        out["augment_config"] = json.dumps(fill_earlier(json.loads(augment), earlier.OFFLINE_AUGMENT,
                                                            earlier.DROPPED["offline_augment"]))
    elif isinstance(augment, dict):
        out["augment_config"] = fill_earlier(augment, earlier.OFFLINE_AUGMENT, earlier.DROPPED["offline_augment"])
    return out


def _from_version_2(record: Dict[str, Any]) -> Dict[str, Any]:
    """Version 2 -> 3: the feature config gains `audio: logmel` (and `waveform_rate`); the
    augmentation config is unchanged."""
    return {**record, "feature_config": fill_earlier(record["feature_config"], earlier.BEFORE_WAVEFORM)}


#: `version -> function` bringing a record of that version to the next one.
MIGRATIONS: Dict[int, Callable[[Dict[str, Any]], Dict[str, Any]]] = {1: _from_version_1, 2: _from_version_2}


def migrate(record: Dict[str, Any], source: str) -> Dict[str, Any]:
    """A shard's decoded attributes or an index, brought to today's meaning.

    Args:
        record: with `schema_version` and `feature_config` (a mapping).
        source: the file, named in messages and logged once when migrated.

    Returns:
        `record` itself for the current version, else a migrated copy (same `schema_version`).

    Raises:
        ValueError: a `schema_version` that is not an integer from 1 to :data:`SCHEMA_VERSION`.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a mapping of attributes, got {type(record).__name__}")
    version = record.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"{source}: expected schema_version 1..{SCHEMA_VERSION} (newer files need a newer "
                         f"avsc-pipeline), got {version!r}")
    config = record.get("feature_config")
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a feature_config mapping, got {type(config).__name__}")
    if version == SCHEMA_VERSION:
        return record
    for step in range(version, SCHEMA_VERSION):
        record = MIGRATIONS[step](record)
    if source not in _LOGGED:
        _LOGGED.add(source)
        logger.info("%s: written with schema version %d; its configs are completed with the earlier values of "
                    "the keys that version left out", source, version)
    return record
