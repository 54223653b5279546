"""`avsc-predict`: classify raw recordings with a checkpoint (stage one runs inside)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import click

from avsc_pipeline.features.media_audio import VIDEO_SUFFIXES

from avsc_pipeline.sections.model import MODALITIES  # imports no model (nor torch)

from avsc_pipeline.corpus.tau import TAU_SPLITS
from avsc_pipeline_cli.common import (Command, checkpoints_option, device_option, ensemble_options, output_folder,
                                      scoring_options, setup_logging)



def pair_inputs(paths: Sequence[Path]) -> List[Tuple[Path, Optional[Path]]]:
    """`AUDIO [VIDEO] ...` -> `(audio, video or None)` pairs: a video file (.mp4, ...) right after
    an audio file is that file's video; any other video stands alone, `(video, video)`: its sound
    comes from its own audio track."""
    pairs: List[Tuple[Path, Optional[Path]]] = []
    for path in paths:
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        follows_audio = bool(pairs) and pairs[-1][1] is None and pairs[-1][0].suffix.lower() not in VIDEO_SUFFIXES
        if is_video and follows_audio:
            pairs[-1] = (pairs[-1][0], path)
        else:
            pairs.append((path, path if is_video else None))
    return pairs


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@checkpoints_option
@click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, path_type=Path),
              help="A TAU-layout data set folder or a CSV manifest, instead of INPUTS.")
@click.option("--split", type=click.Choice(TAU_SPLITS), default="all", show_default=True,
              help="Which list of a TAU-layout --manifest.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-segment rows here (predictions.tsv format) and per-clip rows beside it (NAME.clips.tsv).")
@ensemble_options
@scoring_options
@device_option
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes extracting features.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Segments per batch.")
@click.option("--modality", type=click.Choice(MODALITIES), default=None,
              help="audio or video: one modality of a joint model (the other's embedding replaced by its mean)  "
                   "[default: the model's own]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar while scoring.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(checkpoints: Tuple[Path, ...], inputs: Tuple[Path, ...], manifest: Optional[Path], split: str,
         out_file: Optional[Path], weights: Optional[str], mean: Optional[str], tta: Tuple[str, ...],
         no_calibration: bool, clip_pool: str, device: str, jobs: int, batch_size: int, modality: Optional[str],
         progress: bool, verbose: int) -> None:
    """Predict the scene of each recording: INPUTS are AUDIO [VIDEO] ... or lone videos.

    A video file (MP4, ...) right after an audio file (WAV) is that recording's video; a video on
    its own is read whole: its frames, and its sound from its own audio track (as phones and
    cameras record them).

    Each WAV goes through stage one's feature code under the checkpoint's feature config
    (with the MP4 that follows it, for a model that uses video); prints each clip's predicted
    scene and its probability. Exits with status 1 when any recording could not be read.

    Several --checkpoint values score as one ensemble (each recording's features are extracted
    once for all members); the stored temperatures apply unless --no-calibration.

    Example: avsc-predict --checkpoint runs/demo/joint/best.pt rec.wav rec.mp4 --out preds.tsv
    """
    setup_logging(verbose)
    from avsc_pipeline.evaluation.ensemble import parse_weights
    from avsc_pipeline.evaluation.recordings import predict_files, write_prediction_files
    from avsc_pipeline.evaluation.tta import parse_tta
    from avsc_pipeline.corpus.manifest import load_manifest

    if bool(inputs) == bool(manifest):
        raise click.UsageError("expected recordings (AUDIO [VIDEO] ...) or --manifest, got "
                               f"{'both' if inputs else 'neither'}")
    if out_file is not None:
        output_folder(out_file.parent, "--out's folder")
    try:
        recordings = load_manifest(manifest, split) if manifest else pair_inputs(inputs)
        result = predict_files(list(checkpoints), recordings, device=device, jobs=jobs, batch_size=batch_size,
                               modality=modality, progress=progress, calibrated=not no_calibration,
                               weights=parse_weights(weights), mean=mean, tta=parse_tta(tta), clip_pool=clip_pool)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    for outcome in result.clips:
        if outcome.ok and outcome.clip.audio == outcome.clip.video:
            click.echo(f"{outcome.clip.clip_id}: sound from the audio track of {outcome.clip.video.name}")
    _print_clips(result)
    if out_file is not None:
        segments_file, clips_file = write_prediction_files(result, out_file)
        click.echo(f"wrote {segments_file} and {clips_file}")
    if result.failed:
        for outcome in result.failed:
            click.echo(f"Error: {outcome.error}", err=True)
        click.echo(f"{len(result.failed)} of {len(result.clips)} recordings failed", err=True)
        sys.exit(1)


def _print_clips(result) -> None:
    rows = [("clip", "predicted", "probability", "segments")]
    for outcome in result.clips:
        if outcome.ok:
            probs = outcome.clip_probs
            best = int(probs.argmax())
            rows.append((outcome.clip.clip_id, result.classes[best], f"{probs[best]:.3f}", str(len(outcome.probs))))
        else:
            rows.append((outcome.clip.clip_id, "FAILED", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("   ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1])]
                              + [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]).rstrip())


if __name__ == "__main__":
    main()
