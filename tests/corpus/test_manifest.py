import pytest

from avsc_pipeline.corpus.manifest import load_csv, load_manifest, resolve_classes
from avsc_pipeline.corpus.tau import TAU_CLASSES, identifier_from_name, load_tau


def test_tau_splits(tau_root):
    all_clips = load_tau(tau_root, "all")
    train, evaluate, test = (load_tau(tau_root, s) for s in ("train", "evaluate", "test"))
    assert len(all_clips) == 6 and len(train) == 3 and len(evaluate) == 3
    assert [c.label for c in test] == [None] * 3
    assert {c.clip_id for c in train} | {c.clip_id for c in evaluate} == {c.clip_id for c in all_clips}
    clip = train[0]
    assert clip.audio == tau_root / "audio" / f"{clip.clip_id}.wav"
    assert clip.video == tau_root / "video" / f"{clip.clip_id}.mp4"
    # fold lists carry no identifier: it comes from meta.csv
    assert clip.identifier == next(c.identifier for c in all_clips if c.clip_id == clip.clip_id)


def test_identifier_derived_from_name():
    assert identifier_from_name("street_traffic-barcelona-161-4901") == "barcelona-161"


def test_identifier_derived_when_meta_lacks_it(tmp_path):
    (tmp_path / "meta.csv").write_text(
        "filename_audio\tfilename_video\tscene_label\n"
        "audio/park-lyon-1-2.wav\tvideo/park-lyon-1-2.mp4\tpark\n"
    )
    (clip,) = load_tau(tmp_path, "all")
    assert clip.identifier == "lyon-1" and clip.label == "park"


def test_unknown_label_names_the_row(tmp_path):
    (tmp_path / "meta.csv").write_text(
        "filename_audio\tfilename_video\tscene_label\n"
        "audio/park-lyon-1-2.wav\tvideo/park-lyon-1-2.mp4\tpark\n"
        "audio/x-lyon-1-3.wav\tvideo/x-lyon-1-3.mp4\tbeach\n"
    )
    with pytest.raises(ValueError, match=r"meta\.csv:3: unknown scene label 'beach'"):
        load_tau(tmp_path, "all")


def test_missing_fold_file_and_bad_split(tau_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_tau(tau_root, "validation")
    with pytest.raises(FileNotFoundError, match="fold1_train.csv"):
        load_tau(tmp_path, "train")


def test_generic_csv(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "m.csv").write_text("audio,video,label,group\n../a/one.wav,../v/one.mp4,dog,g1\n../a/two.wav,,cat,\n")
    with pytest.raises(ValueError, match="with"):
        from avsc_pipeline.features.extract import _uses_video

        _uses_video(load_csv(sub / "m.csv"))
    clips = load_manifest(sub / "m.csv")
    assert clips[0].audio == sub / "../a/one.wav" and clips[0].video == sub / "../v/one.mp4"
    assert clips[0].identifier == "g1" and clips[1].identifier == "two"
    assert clips[1].video is None
    assert resolve_classes(clips) == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"m\.csv:3: label 'cat' is not in the class list"):
        resolve_classes(clips, ["dog"])


def test_default_classes_are_tau(tau_root):
    assert resolve_classes(load_tau(tau_root, "train")) == list(TAU_CLASSES)


def test_duplicate_clip_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("audio\na.wav\nsub/a.wav\n")
    with pytest.raises(ValueError, match="duplicate clip id 'a'"):
        load_csv(tmp_path / "m.csv")


def test_clips_keep_their_file_names_as_the_list_gives_them(tau_root, tmp_path):
    clip = load_tau(tau_root, "train")[0]
    assert (clip.audio_file, clip.video_file) == (f"audio/{clip.clip_id}.wav", f"video/{clip.clip_id}.mp4")
    (tmp_path / "m.csv").write_text("audio,video,label\n ../a/one.flac ,../v/one.mp4,dog\nsub/two.wav,,cat\n")
    one, two = load_csv(tmp_path / "m.csv")
    assert (one.audio_file, one.video_file) == ("../a/one.flac", "../v/one.mp4")
    assert (two.audio_file, two.video_file) == ("sub/two.wav", "")


def test_a_clip_made_without_listed_names_names_its_paths(tmp_path):
    from avsc_pipeline.corpus.clips import Clip

    clip = Clip("a", tmp_path / "a.wav", tmp_path / "a.mp4", None, "loc")
    assert (clip.audio_file, clip.video_file) == (str(tmp_path / "a.wav"), str(tmp_path / "a.mp4"))
    assert Clip("b", tmp_path / "b.wav", None, None, "loc").video_file == ""
