"""Seats in a host-wide folder split the cores among generating engines; dead holders drop out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from presets.settings import load_settings
from worker.app import core_share_for
from worker.core_share import CoreShare, count_seats


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_an_engine_alone_keeps_every_core(tmp_path: Path) -> None:
    share = CoreShare(directory=tmp_path, cores=8, max_threads=8)
    with share.seat() as seat:
        assert seat.held
        assert seat.threads() == 8
        assert count_seats(tmp_path) == 1
    assert count_seats(tmp_path) == 0
    assert os.listdir(tmp_path) == []


def test_seats_split_the_cores_and_a_leaving_seat_gives_them_back(tmp_path: Path) -> None:
    clock = Clock()
    share = CoreShare(directory=tmp_path, cores=8, max_threads=8, refresh_s=0.05, clock=clock)
    first = share.seat()
    assert first.threads() == 8
    with share.seat() as second, share.seat() as third:
        # The first seat counted before the others came, and counts again only after refresh_s.
        assert first.threads() == 8
        clock.now_s += 0.05
        assert first.threads() == 8 // 3
        assert second.threads() == third.threads() == 2
    clock.now_s += 0.05
    assert first.threads() == 8
    first.close()


def test_threads_stay_within_one_and_the_worker_cap(tmp_path: Path) -> None:
    share = CoreShare(directory=tmp_path, cores=2, max_threads=2)
    seats = [share.seat() for _ in range(3)]
    assert [seat.threads() for seat in seats] == [1, 1, 1]
    for seat in seats:
        seat.close()
    capped = CoreShare(directory=tmp_path, cores=16, max_threads=4)
    with capped.seat() as seat, capped.seat():
        assert seat.threads() == 4


def test_a_file_nobody_holds_is_not_counted_and_is_removed(tmp_path: Path) -> None:
    (tmp_path / "4242-deadbeef.seat").write_bytes(b"")
    (tmp_path / "unrelated.txt").write_bytes(b"")
    assert count_seats(tmp_path) == 0
    assert sorted(os.listdir(tmp_path)) == ["unrelated.txt"]


def test_a_killed_process_seat_drops_out(tmp_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from worker.core_share import CoreShare
        seat = CoreShare(directory=Path({str(tmp_path)!r}), cores=2, max_threads=2).seat()
        print("seated", flush=True)
        time.sleep(60)
        """
    )
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-c", holder], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "seated"
        share = CoreShare(directory=tmp_path, cores=2, max_threads=2)
        with share.seat() as seat:
            assert seat.threads() == 1
            process.kill()
            process.wait(timeout=10)
            time.sleep(0.06)
            assert seat.threads() == 2
        assert os.listdir(tmp_path) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_fixed_share_ignores_others_and_touches_no_files(tmp_path: Path) -> None:
    shared = CoreShare(directory=tmp_path, cores=2, max_threads=2)
    with shared.seat(), CoreShare.fixed(2).seat() as seat:
        assert not seat.held
        assert seat.threads() == 2
        # No llama.cpp context is needed: a fixed seat leaves the context's threads alone.
        assert seat.apply_to(object()) == 2


def test_a_folder_that_cannot_be_made_leaves_the_full_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with CoreShare(directory=blocker / "cores", cores=4, max_threads=4).seat() as seat:
        assert not seat.held
        assert seat.threads() == 4
    assert "cannot share the cores" in caplog.text


def test_the_settings_choose_the_share(tmp_path: Path) -> None:
    share = core_share_for(load_settings(n_threads=3, core_share_dir=tmp_path))
    assert share.directory == tmp_path
    assert share.max_threads == 3
    fixed = core_share_for(load_settings(n_threads=3, share_cores=False))
    assert fixed.directory is None
    assert fixed.max_threads == 3
    every_core = core_share_for(load_settings(n_threads=None, core_share_dir=tmp_path))
    assert every_core.max_threads == len(os.sched_getaffinity(0))
