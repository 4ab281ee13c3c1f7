"""A provider's log is kept in two halves, like a container's."""

from __future__ import annotations

from pathlib import Path

from bismuth_agent.providers import LOG_FILE, cap_log


def test_a_log_past_half_the_cap_moves_aside_and_starts_again(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    log.write_bytes(b"a" * 60)
    cap_log(tmp_path, max_bytes=100)
    assert (log.read_bytes(), (tmp_path / f"{LOG_FILE}.1").read_bytes()) == (b"", b"a" * 60)
    with log.open("ab") as out:  # the provider appends: it writes on at the start
        out.write(b"b" * 10)
    cap_log(tmp_path, max_bytes=100)
    assert log.read_bytes() == b"b" * 10


def test_no_log_is_nothing_to_do(tmp_path: Path) -> None:
    cap_log(tmp_path, max_bytes=100)
    assert list(tmp_path.iterdir()) == []
