"""Models: audio FCNN, video backbones, pretrained-weight loading, fusion head, checkpoints.

Modules (import what you need from them; this package imports nothing heavy itself):

- :mod:`.config`: `ModelConfig`, the `model:` YAML section; `STAGES` / `MODALITIES`.
- :mod:`.fcnn`: `FCNN`, the audio extractor of Hu et al. (ICASSP 2021), and `ChannelAttention`.
- :mod:`.cnn14`: PANNs' CNN14 with its release's layer names (`Cnn14`), run per audio channel
  (`Cnn14Audio`, E_A), and the exact loader of `Cnn14_mAP=0.431.pth` (`load_cnn14_weights`).
- :mod:`.video`: `VIDEO_BACKBONES` (name -> `BackboneSpec`), `build_backbone`, and
  `VideoExtractor`, which sums a backbone's embeddings over a segment's frames (E_V).
- :mod:`.weights`: loading local pre-trained weight files (Places365, torchvision, timm's
  `.safetensors`) into a backbone, checking that every tensor matches.
- :mod:`.fusion`: `MLPHead`, the classifier on E_V or E_F = [E_A, E_V].
- :mod:`.registry`: `AUDIO_EXTRACTORS` and `VIDEO_BACKBONES`.
- :mod:`.classifier`: `SceneClassifier` (audio / video / joint stage), `build_model`,
  `count_parameters`.
- :mod:`.checkpoint`: the checkpoint file format shared by training and evaluation:
  `save_checkpoint`, `load_checkpoint`, `model_from_checkpoint`, `CheckpointError`.

Models know tensors, not shards: nothing here imports `dataio`, `features` or `storage`.
"""
