"""What the local driver says about a process group that outlives its signals, read from /proc."""

from __future__ import annotations

import subprocess
import sys

from fleetspec.drivers import local


def test_the_live_members_of_a_group_are_named_with_their_kernel_state():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        members = local._live_members(child.pid)
        assert (str(child.pid), members[0][1]) in members
        assert members[0][1] in "RSD"  # running, sleeping or uninterruptible: never a zombie
        said = local._stuck_members(child.pid)
        assert said.startswith("left in its group: ") and f"pid {child.pid} in state" in said
    finally:
        child.kill()
        child.wait()
    assert local._live_members(child.pid) == []  # reaped: nothing of the group is left
    assert local._stuck_members(child.pid) == ""
