"""tools/childproc.py: what the tools do to the processes they start."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, wait_for

TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))

from childproc import (child_setup, process_tree, raise_nofile, tcp_sockstat,  # noqa: E402
                       tree_rss_bytes)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_started_process_dies_with_the_tool_and_gets_the_whole_fd_allowance():
    # The "tool": starts a child through child_setup, prints the child's pid and fd limit,
    # then exits without waiting for it. The kernel must then kill the child.
    tool = textwrap.dedent(f"""
        import subprocess, sys
        sys.path.insert(0, {str(TOOLS)!r})
        from childproc import child_setup
        child = subprocess.Popen([sys.executable, "-c",
            "import resource, sys, time; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0],"
            " flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, preexec_fn=child_setup(cpus=[{{os_cpu}}]))
        print(child.pid, child.stdout.readline().decode().strip(), flush=True)
    """).replace("{os_cpu}", str(min(os.sched_getaffinity(0))))
    out = subprocess.run([sys.executable, "-c", tool], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid_s, limit_s = out.stdout.split()
    assert int(limit_s) == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wait_for(lambda: not _alive(int(pid_s)), 10, "the child killed with its parent")


def test_raise_nofile_sets_the_soft_limit_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
        assert raise_nofile() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_child_setup_pins_to_the_cpus_given():
    cpu = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, timeout=30, preexec_fn=child_setup([cpu]))
    assert out.stdout.strip() == f"[{cpu}]"


def test_readers_agree_with_what_this_process_knows_of_itself():
    from childproc import cpu_seconds, cpu_ticks, fd_count, stat_cpu_ticks, status_kb

    pid = os.getpid()
    before = fd_count(pid)
    r, w = os.pipe()
    try:
        assert fd_count(pid) == before + 2
    finally:
        os.close(r)
        os.close(w)
    times = os.times()
    assert abs(cpu_seconds(pid) - (times.user + times.system)) < 0.5
    assert cpu_ticks(pid) >= 0
    # The name field may hold spaces and parentheses: fields are counted after the last ")".
    line = "42 (a b) c) S " + " ".join(["0"] * 10) + " 7 5 0 0"
    assert stat_cpu_ticks(line) == 12
    assert status_kb(pid, "VmRSS") > 0
    with pytest.raises(KeyError):
        status_kb(pid, "NoSuchField")


def test_the_process_tree_and_its_rss_from_proc():
    tree = process_tree(os.getppid())
    assert tree[0] == os.getppid() and os.getpid() in tree
    rss, procs = tree_rss_bytes(os.getpid())
    assert rss > 1 << 20 and procs >= 1
    assert tree_rss_bytes(2**22 + 12345) is None


def test_tcp_sockstat_counts_a_socket_held_here():
    import socket

    before = tcp_sockstat()
    assert before is not None and before["tcp_mem_bytes"] >= 0
    with socket.create_server(("127.0.0.1", 0)):
        got = tcp_sockstat()
        assert got is not None and got["tcp_inuse"] >= 1
    assert set(got) == {"tcp_inuse", "tcp_time_wait", "tcp_mem_bytes"}
