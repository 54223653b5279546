"""The writer's lock on an output folder: a second extraction into one folder refuses in one line
naming the holder's PID; parts of one folder run side by side; the lock dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from avsc_pipeline.storage.folder_lock import LOCK_NAME, FolderBusyError, folder_lock
from avsc_pipeline_cli.features import main as features_main

HOLDER = textwrap.dedent("""
    import sys
    from avsc_pipeline.storage.folder_lock import folder_lock

    part = tuple(int(v) for v in sys.argv[2].split("/")) if len(sys.argv) > 2 else None
    with folder_lock(sys.argv[1], part):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


@pytest.fixture
def holder(tmp_path):
    """`holder(folder, part=None)`: another process holding the folder's lock until the test ends."""
    started = []

    def start(folder, part=None):
        args = [sys.executable, "-c", HOLDER, str(folder)] + ([part] if part else [])
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"  # the event: it holds the lock
        return proc

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_second_whole_run_refuses_naming_the_holder(holder, tmp_path):
    other = holder(tmp_path / "train")
    with pytest.raises(FolderBusyError) as caught:
        with folder_lock(tmp_path / "train"):
            pytest.fail("two holders of one folder")
    assert str(caught.value) == (f"{tmp_path / 'train'}: another run is writing this folder (PID {other.pid}); "
                                 "wait for it to finish or stop it, then run again")


def test_the_lock_is_released_on_exit_and_when_its_holder_is_killed(holder, tmp_path):
    folder = tmp_path / "train"
    with folder_lock(folder):
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert (folder / LOCK_NAME).read_text() == ""  # released: nobody named
    with folder_lock(folder):  # taken again
        pass
    other = holder(folder)
    other.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
    other.wait(timeout=60)
    with folder_lock(folder):
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_parts_run_side_by_side_but_exclude_a_whole_run_and_the_same_part(holder, tmp_path):
    folder = tmp_path / "train"
    first = holder(folder, "1/2")
    with folder_lock(folder, (2, 2)):  # the other part: fine
        with pytest.raises(FolderBusyError, match=rf"\(PID {first.pid} \(part 1/2\), PID {os.getpid()} "
                                                  r"\(part 2/2\)\)"):
            with folder_lock(folder):
                pass
    with pytest.raises(FolderBusyError, match=rf"\(PID {first.pid}\)"):
        with folder_lock(folder, (1, 2)):
            pass
    with folder_lock(folder, (2, 2)):  # released and taken again
        pass


def test_a_part_refuses_while_a_whole_run_holds_the_folder(holder, tmp_path):
    whole = holder(tmp_path / "train")
    with pytest.raises(FolderBusyError, match=rf"\(PID {whole.pid}\)"):
        with folder_lock(tmp_path / "train", (1, 4)):
            pass


def test_extract_refuses_in_one_line_while_another_process_writes_the_folder(holder, tau_root, tmp_path):
    other = holder(tmp_path / "features" / "train")
    result = CliRunner().invoke(features_main, ["extract", str(tau_root), str(tmp_path / "features"), "--split",
                                                "train", "--no-progress"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'features' / 'train'}: another run is writing this folder "
                             f"(PID {other.pid}); wait for it to finish or stop it, then run again\n")
    assert not list((tmp_path / "features" / "train").glob("shard-*"))  # no work done


def test_augment_refuses_while_this_process_holds_its_folder(tau_root, tmp_path):
    (tmp_path / "features" / "train").mkdir(parents=True)
    with folder_lock(tmp_path / "features" / "train-aug"):
        result = CliRunner().invoke(features_main, ["augment", str(tau_root), str(tmp_path / "features"),
                                                    "--no-progress"])
    assert result.exit_code == 1 and f"(PID {os.getpid()})" in result.output
    assert len(result.output.strip().splitlines()) == 1


SECOND = textwrap.dedent("""
    import sys
    from avsc_pipeline_cli.features import main

    print("ready", flush=True)
    sys.stdin.readline()  # the go of the test: the first run holds the folder
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_two_extractions_into_one_folder_one_refuses(tau_root, tmp_path):
    """Two real extraction processes: the second, started while the first works, refuses at once."""
    import time

    args = ["extract", str(tau_root), str(tmp_path / "features"), "--split", "train", "--no-progress"]
    executable = os.path.join(os.path.dirname(sys.executable), "avsc-features")
    if not os.path.exists(executable):
        pytest.skip(f"the package's commands are not installed beside {sys.executable}")
    # The second is started first and waits with its imports done, so that it reaches the lock
    # within milliseconds of its go.
    second = subprocess.Popen([sys.executable, "-c", SECOND] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "ready"
    lock = tmp_path / "features" / "train" / LOCK_NAME
    first = subprocess.Popen([executable] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while first.poll() is None and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.01)  # polling for the event: the first holds the lock (its PID in the file)
    _, second_err = second.communicate("go\n", timeout=600)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    if second.returncode == 0:
        pytest.skip("the first extraction ended before the second reached the lock (a very fast machine)")
    assert second.returncode == 1, second_err
    assert second_err == (f"Error: {tmp_path / 'features' / 'train'}: another run is writing this folder "
                          f"(PID {first.pid}); wait for it to finish or stop it, then run again\n")
