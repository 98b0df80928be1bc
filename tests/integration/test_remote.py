"""The core's RemoteShell over the real sshd."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_output_written_after_the_exit_status_is_not_lost(shell):
    # The shell exits at once (sshd sends the exit status), a child keeps writing to the same
    # stdout: the output is complete only at EOF, not at the exit status.
    rc, out, _ = shell.run("(sleep 0.5; echo late) & echo early", timeout=30)
    assert rc == 0 and out.split() == ["early", "late"]


def test_a_command_past_its_timeout_is_abandoned(shell):
    with pytest.raises(TimeoutError, match="ran past"):
        shell.run("sleep 5", timeout=1)
