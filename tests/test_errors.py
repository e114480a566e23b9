"""The one way an orphan ends: SIGTERM once its parent is gone, which run_stage unwinds like Ctrl-C."""
from __future__ import annotations

import subprocess
import sys
import time

# A parent that starts a child under run_stage, prints the child's pid once it is in main(), and sleeps until killed.
# The child's main never returns by itself: only its parent's death can end it.
PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import time
from nnlib.errors import run_stage

def main():
    print("ready", flush=True)
    while True:
        time.sleep(0.05)

run_stage(main)
'''], stdout=subprocess.PIPE, stderr=open(sys.argv[1], "w"), text=True)
assert child.stdout.readline() == "ready\n"
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_stage_whose_parent_dies_is_terminated_like_sigterm(tmp_path):
    stderr = tmp_path / "stderr.txt"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(stderr)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/status") as status:
                if "zombie" in status.read():
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the orphaned stage {child} still runs 10 s after its parent died")
    assert stderr.read_text() == "terminated\n"  # run_stage caught Terminated: it exits 143
