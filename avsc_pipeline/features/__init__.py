"""Stage one: from recordings to HDF5 feature shards.

Modules:
    config: the `features:` and `offline_augment:` sections (`FeatureConfig`,
        `OfflineAugmentConfig`), the authors' definitions by default.
    audio: log-mel + delta + delta-delta features (`FastLogMel`; `reference_features` in librosa).
    waveform: the waveform definition (`features.audio: waveform`): each segment resampled to
        `waveform_rate` (`WaveformSegments`).
    video: frame-pair decoding and the one resize (`read_frame_pairs`, `resize_frames`).
    extract: extraction of a manifest into a shard folder (`extract_split`, `avsc-features extract`).
    offline_augment: the four waveform operations (pitch, speed, noise, mix) and their keyed
        parameter draws.
    offline_augment_shards: offline augmentation of a split into `<split>-aug` shards whose rows
        refer to stage one's frames (`augment_split`, `avsc-features augment`).
    pvoc: the phase vocoder behind the pitch shift and the time stretch.
    shard_engine: planning, ordered workers, atomic and resumable shard writing, settings
        files and the run summary, shared by extraction and offline augmentation.
    clip_records: what defines each clip's rows (`clips.json`): a rerun rewrites the shards of
        changed clips and refuses, in words, a manifest that adds or removes clips.
    media_audio: the sound of a video file's own audio track (a lone MP4 in `avsc-predict`).
    verify: `avsc-features verify`: shards checked against the schema their configs imply.

Nothing is imported here, so `import avsc_pipeline.features` stays cheap.
"""
