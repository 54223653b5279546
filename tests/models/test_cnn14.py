"""PANNs' CNN14: its release's layer names, exact loading of a file shaped like
`Cnn14_mAP=0.431.pth` and refusal naming a missing tensor, and E_A = the mean of the channels'
`fc1` embeddings (against PANNs' forward written out)."""

from __future__ import annotations

import pickle

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.models.cnn14 import Cnn14, Cnn14Audio, load_cnn14_weights
from avsc_pipeline.sections.model import ModelConfig

#: PANNs' `Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
#: fmax=14000, classes_num=527)`, as `pytorch/models.py` defines it: (channels in, out) of
#: conv_block1..6.
BLOCKS = [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048)]


def bn_keys(name, width):
    return {f"{name}.weight": (width,), f"{name}.bias": (width,), f"{name}.running_mean": (width,),
            f"{name}.running_var": (width,), f"{name}.num_batches_tracked": ()}


def release_shapes():
    """Every tensor of the release's state dict, name -> shape (torchlibrosa's front end:
    `Spectrogram` as two conv1d DFT kernels, `LogmelFilterBank.melW`)."""
    shapes = {"spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
              "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
              "logmel_extractor.melW": (513, 64)}
    shapes.update(bn_keys("bn0", 64))
    for i, (cin, cout) in enumerate(BLOCKS, start=1):
        shapes[f"conv_block{i}.conv1.weight"] = (cout, cin, 3, 3)
        shapes[f"conv_block{i}.conv2.weight"] = (cout, cout, 3, 3)
        shapes.update(bn_keys(f"conv_block{i}.bn1", cout))
        shapes.update(bn_keys(f"conv_block{i}.bn2", cout))
    shapes.update({"fc1.weight": (2048, 2048), "fc1.bias": (2048,), "fc_audioset.weight": (527, 2048),
                   "fc_audioset.bias": (527,)})
    return shapes


def release_state(seed=0):
    """A state dict shaped like the release, random values (positive running variances), the
    front end's filter bank as torchlibrosa makes it (librosa's Slaney mel, transposed)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in release_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.05
    mel = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0, htk=False, norm="slaney")
    state["logmel_extractor.melW"] = torch.from_numpy(mel.T.copy())
    return state


@pytest.fixture(scope="module")
def release():
    """The release-shaped state dict (read-only for tests: copy the dict to change it)."""
    return release_state()


@pytest.fixture(scope="module")
def release_file(release, tmp_path_factory):
    path = tmp_path_factory.mktemp("panns") / "Cnn14_mAP=0.431.pth"
    torch.save({"model": release}, path)
    return path


def test_the_layers_carry_the_release_names_and_shapes():
    expected = {k: v for k, v in release_shapes().items()
                if not k.startswith(("spectrogram_extractor.", "logmel_extractor.", "fc_audioset."))}
    got = {k: tuple(v.shape) for k, v in Cnn14().state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in Cnn14().parameters()) == 79_673_792  # PANNs' 80,753,615 less fc_audioset


def test_a_release_shaped_file_loads_exactly(release, release_file, caplog):
    config = ModelConfig(modality="audio", audio="panns_cnn14", audio_weights=str(release_file))
    with caplog.at_level("INFO"):
        model = build_model(config, num_classes=10, audio_channels=2)
    state = release
    own = model.audio.backbone.state_dict()
    skipped = [k for k in state if k not in own]
    assert sorted(skipped) == sorted(["spectrogram_extractor.stft.conv_real.weight", "logmel_extractor.melW",
                                      "spectrogram_extractor.stft.conv_imag.weight", "fc_audioset.weight",
                                      "fc_audioset.bias"])
    for name, tensor in own.items():
        assert torch.equal(tensor, state[name]), name
    assert "loaded 79 CNN14 tensors" in caplog.text


@pytest.mark.slow
def test_a_plain_state_dict_with_module_prefixes_loads_too(release, tmp_path):
    state = {f"module.{k}": v for k, v in release.items()}
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    backbone = Cnn14()
    assert load_cnn14_weights(backbone, path) == 79
    assert torch.equal(backbone.conv_block6.bn2.running_var, state["module.conv_block6.bn2.running_var"])


def test_a_file_missing_a_tensor_is_refused_naming_it(release, tmp_path):
    state = dict(release)
    del state["conv_block3.bn1.running_mean"]
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"model": state}, path)
    backbone = Cnn14()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"Cnn14_mAP=0\.431\.pth: does not fit PANNs' CNN14; 1 CNN14 tensor\(s\) "
                                         r"missing from the file: conv_block3\.bn1\.running_mean"):
        load_cnn14_weights(backbone, path)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing loaded


@pytest.mark.slow
def test_a_mismatched_shape_and_another_front_end_are_refused(release, tmp_path):
    state = dict(release)
    state["fc1.weight"] = torch.zeros(1024, 2048)
    torch.save({"model": state}, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"fc1\.weight: file \(1024, 2048\) != model \(2048, 2048\)"):
        load_cnn14_weights(Cnn14(), tmp_path / "narrow.pth")
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50.0, fmax=8000.0, htk=False, norm="slaney")
    torch.save({"model": {**release, "logmel_extractor.melW": torch.from_numpy(mel.T.copy())}},
               tmp_path / "Cnn14_16k.pth")
    with pytest.raises(ValueError, match=r"its front end \(logmel_extractor\.melW \(257, 64\)\) is not PANNs' 32 kHz"):
        load_cnn14_weights(Cnn14(), tmp_path / "Cnn14_16k.pth")


@pytest.mark.slow
def test_a_legacy_pickle_needs_the_unsafe_flag(release, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": release, "sampler": {"queue": np.arange(3)}}, path, pickle_protocol=2)
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        pass
    else:
        pytest.skip("this torch reads numpy arrays with weights_only=True")
    with pytest.raises(ValueError, match="needs the full unpickler .* set model.audio_weights_unsafe: true"):
        load_cnn14_weights(Cnn14(), path)
    assert load_cnn14_weights(Cnn14(), path, allow_unsafe=True) == 79


def panns_embedding(cnn: Cnn14, log_mel: torch.Tensor) -> torch.Tensor:
    """PANNs' `Cnn14.forward` from `x = x.transpose(1, 3)` to `x = F.relu_(self.fc1(x))` (eval
    mode: no dropout), written out on `(N, 1, T, 64)`."""
    x = cnn.bn0(log_mel.transpose(1, 3)).transpose(1, 3)
    for i in range(1, 7):
        block = getattr(cnn, f"conv_block{i}")
        x = F.relu_(block.bn1(block.conv1(x)))
        x = F.relu_(block.bn2(block.conv2(x)))
        x = F.avg_pool2d(x, kernel_size=(2, 2) if i < 6 else (1, 1))
    x = torch.mean(x, dim=3)
    (x1, _) = torch.max(x, dim=2)
    x2 = torch.mean(x, dim=2)
    return F.relu_(cnn.fc1(x1 + x2))


def test_e_a_is_the_mean_of_the_channels_fc1_embeddings(release_file):
    extractor = Cnn14Audio(num_classes=5)
    load_cnn14_weights(extractor.backbone, release_file)
    extractor.eval()
    log_mel = torch.randn(2, 2, 64, 40) * 10 - 40
    with torch.no_grad():
        e_a = extractor.embed(log_mel)
        left = panns_embedding(extractor.backbone, log_mel[:, 0].transpose(1, 2)[:, None])
        right = panns_embedding(extractor.backbone, log_mel[:, 1].transpose(1, 2)[:, None])
        logits = extractor(log_mel)
    assert e_a.shape == (2, 2048)
    torch.testing.assert_close(e_a, (left + right) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, extractor.head(e_a))
    with pytest.raises(ValueError, match=r"expected PANNs' log-mel of shape \(B, C, 64, T >= 32\)"):
        extractor.embed(torch.zeros(1, 6, 128, 39))


def test_the_config_refuses_weights_for_the_fcnn_and_scores_without_reading_them(release_file, tmp_path):
    with pytest.raises(ValueError, match="expected audio_weights null for audio 'fcnn'"):
        ModelConfig(audio_weights=str(release_file))
    config = ModelConfig(modality="audio", audio="panns_cnn14", audio_weights=str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="absent.pth"):
        build_model(config, 10, 2)
    assert isinstance(build_model(config, 10, 2, load_weights=False).audio, Cnn14Audio)  # a checkpoint follows
    joint = build_model(ModelConfig(audio="panns_cnn14", video="small_cnn"), 10, 2, load_weights=False)
    assert not any(p.requires_grad for p in joint.audio.head.parameters())  # unused by E_A
    assert joint.head.in_dim == 2048 + 64
    assert set(ModelConfig(audio="panns_cnn14").unused_fields()) == {
        "audio_widths", "audio_dropout", "audio_embedding", "audio_bn_eps", "audio_bn_momentum"}
