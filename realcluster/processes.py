"""Processes, mount namespaces and cgroups of a cluster: started inside a node's network and
mount namespaces, and found again (and killed, and unmounted, and removed) from the kernel's
own records, so `down` works after a crash or without any state file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it has not ended `grace` seconds later; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def start(name: str, netns: str, mount_ns: Path, argv: list[str], log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` detached (own session, log file) inside the network namespace `netns`
    and the mount namespace at `mount_ns`. nsenter, not `ip netns exec`: the latter remounts
    /sys, hiding the cgroup mounts from kubelet and runc."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    cmd = ["nsenter", f"--net=/run/netns/{netns}", f"--mount={mount_ns}", "--", *argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **(env or {})})
    out.close()
    (log.parent / f"{name}.pid").write_text(str(proc.pid))
    return proc


def in_mount_ns(mount_ns: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nsenter", f"--mount={mount_ns}", "--", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {mount_ns}: {proc.stderr.strip()}")
    return proc


def make_mount_ns(handle: Path) -> None:
    """A persistent mount namespace at `handle` (a file on a private mount), receiving the
    host's later mounts (slave) but never sending its own back."""
    handle.parent.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(handle.parent):
        subprocess.run(["mount", "--bind", str(handle.parent), str(handle.parent)], check=True)
        subprocess.run(["mount", "--make-private", str(handle.parent)], check=True)
    handle.touch()
    subprocess.run(["unshare", f"--mount={handle}", "--propagation", "slave", "true"], check=True)
    # The new namespace holds a copy of the handles' directory, with the other nodes'
    # handles in it: drop it, so no namespace pins another.
    in_mount_ns(handle, "umount", "-l", str(handle.parent))


def is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this (the host's) mount namespace, deepest first."""
    root = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    hits = [p for p in points if p == root or p.startswith(root + "/")]
    return sorted(set(hits), key=len, reverse=True)


def members(netns_inodes: set[int], mntns_inodes: set[int], cgroup_roots: set[str], marker: str) -> list[int]:
    """Every process in one of these network or mount namespaces, in a cgroup under one of
    these roots, or with `marker` in its command line (a process between fork and setns)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        base = f"/proc/{entry}"
        try:
            if ns_inode(f"{base}/ns/net") in netns_inodes or ns_inode(f"{base}/ns/mnt") in mntns_inodes:
                found.append(int(entry))
                continue
            with open(f"{base}/cgroup") as f:
                paths = [line.rstrip("\n").split(":", 2)[2] for line in f]
            if any(p == r or p.startswith(r + "/") for p in paths for r in cgroup_roots):
                found.append(int(entry))
                continue
            with open(f"{base}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def kill_all(find: Callable[[], list[int]], timeout: float = 20.0) -> list[int]:
    """SIGKILL what `find` returns until it returns nothing; the pids that would not die."""
    deadline = time.monotonic() + timeout
    while True:
        pids = find()
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def make_cgroups(root: str) -> None:
    """kubelet wants its cgroupRoot to exist in every hierarchy; a new cpuset cgroup starts
    with no CPUs or memory nodes, so it gets its parent's."""
    for hierarchy in CGROUP_FS.iterdir():
        if not (hierarchy / "cgroup.procs").exists():
            continue
        top = hierarchy / root.strip("/")
        top.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (top / knob).exists() and not (top / knob).read_text().strip():
                (top / knob).write_text((hierarchy / knob).read_text())


def remove_cgroups(root: str) -> list[str]:
    """rmdir the cgroup `root` and everything below it in every hierarchy; what remains."""
    left = []
    for hierarchy in CGROUP_FS.iterdir():
        top = hierarchy / root.strip("/")
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            for _ in range(20):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(dirpath)
    return left
