"""Stage two input: reading shards, sampling epochs, and batch augmentation on the device.

Modules:
    config: :class:`AugmentConfig` and :class:`LoaderConfig` (the `augment:` and `loader:`
        YAML sections).
    dataset: :class:`ShardDataset` over shard folders (originals plus `train-aug`).
    samplers: the location-disjoint split and the epoch sampler (shuffling, a fraction of
        augmented rows, several processes).
    stats: per-channel audio mean and std, computed once and stored beside the shards.
    augment, augment_video: batch augmentation modules (SpecAugment, channel swap, joint mixup,
        restricted RandAugment) and the soft-target loss.
    loader: DataLoader set-up and the on-device batch preparation.

Nothing is imported here, so `import avsc_pipeline.training` stays cheap.
"""
