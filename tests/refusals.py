"""The shared check of a command refusing a user's mistake: one line, exit status 2, nothing run."""
import time


def assert_refused_in_one_line(done, command: str, message: str, folder, started: float) -> None:
    """`done` (a finished subprocess) printed one `mpcft COMMAND: error:` line holding `message`,
    exited with 2, wrote no runs/ in `folder`, within 60 s of `started` (time.monotonic())."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"mpcft {command}: error:") and message in lines[0], lines
    assert not (folder / "runs").exists()
    assert time.monotonic() - started < 60
