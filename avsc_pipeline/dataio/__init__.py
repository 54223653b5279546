"""Stage two input: reading shards, sampling epochs, preparing and augmenting batches on the device.

Modules:
    config: :class:`BatchAugmentConfig` and :class:`LoaderConfig` (the `batch_augment:` and
        `loader:` YAML sections).
    dataset: :class:`ShardDataset` over shard folders (originals plus `train-aug`).
    samplers: the location-disjoint split and the epoch sampler (shuffling, a fraction of
        augmented rows, several processes).
    stats: per-channel audio mean and std, computed once and stored beside the shards.
    batch_augment: SpecAugment, channel swap, joint mixup and one-hot targets.
    video_augment: RandAugment on uint8 frames (the recipe: Identity/Sharpness/Contrast; the
        full torchvision operation set for the ablations).
    rng: per-module generators whose state travels in the state dict.
    preparation: frame and audio normalization and :class:`BatchPreparer` (used by training,
        evaluation and prediction alike).
    front_end: PANNs' log-mel of waveform shards, computed on the device by the preparer.
    loader: DataLoader set-up: whole batches read by workers into shared-memory slots.
    slot_pool: the shared-memory slots the loader's workers read into.

Nothing is imported here, so `import avsc_pipeline.dataio` stays cheap.
"""
