"""Start one VM's QEMU confined: run as root, do the few things that need root, then exec
QEMU as the VM's own uid (inside the host's network namespace).

Run as a script (`python3 -I -S qemu_exec.py ...`): standard library only, no cumulo import,
so it costs a few milliseconds per start. In order:
- join the VM's cgroups (`--cgroup DIR`, once per cgroup: its v2 one and, on a hybrid host,
  one per cgroup v1 controller; this process's pid into each DIR/cgroup.procs; QEMU inherits
  them, so all its memory is charged there from its first page);
- enter the host's network namespace (`--netns NAME`: setns(2) on /run/netns/NAME). Not by
  `ip netns exec`, which also gives its command a new mount namespace with a fresh /sys and
  so without /sys/fs/cgroup: a launcher started that way cannot join any cgroup;
- open each tap (`--tap FD=NAME`: /dev/net/tun, TUNSETIFF) and bind each unix socket
  (`--listen FD=PATH`, mode 0600, owned by root) and put them on fixed fd numbers, which
  QEMU's command line names (`-netdev tap,fd=FD`, `-chardev socket,fd=FD`): QEMU never needs
  CAP_NET_ADMIN nor a writable directory, and a tap vanishes with its QEMU, as before;
- fork: the child starts a new session, drops every group and switches to `--uid/--gid`,
  then execs QEMU in the foreground (QEMU's own -daemonize forks, which its seccomp sandbox
  with spawn=deny kills); the parent prints the child's pid once the exec has happened (or
  the exec error, exit 127) and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def _place(fd: int, slot: int) -> None:
    """Put `fd` on fd number `slot`, inheritable by QEMU."""
    if fd != slot:
        os.dup2(fd, slot)
        os.close(fd)
    os.set_inheritable(slot, True)


def open_tap(name: str) -> int:
    """A tap named `name` in the calling thread's namespace, opened (it lives while the fd
    does: a tap vanishes with its QEMU)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    ifreq = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fcntl.ioctl(fd, TUNSETIFF, ifreq)
    return fd


def _listen(path: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return sock.detach()


def _no_new_privs() -> None:
    """No exec may give privileges back (a setuid binary, file capabilities): QEMU's own
    -sandbox sets it too, but qemu-storage-daemon has no sandbox option to do it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into the named network namespace, as
    `ip netns exec` does, but keeping its mount namespace."""
    if not name or "/" in name or name in (".", ".."):
        raise OSError(f"invalid network namespace name {name!r}")
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns to network namespace {name} failed")
    finally:
        os.close(fd)


def _pairs(values: list[str]) -> list[tuple[int, str]]:
    out = []
    for v in values:
        slot, _, what = v.partition("=")
        out.append((int(slot), what))
    return out


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: qemu_exec.py --uid N --gid N [--cgroup DIR]... [--netns NAME]"
              " [--tap FD=NAME]... [--listen FD=PATH]... -- QEMU ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1:]
    uid = gid = -1
    cgroups: list[str] = []
    netns = ""
    taps: list[str] = []
    listens: list[str] = []
    for key, value in zip(opts[::2], opts[1::2], strict=True):
        if key == "--uid":
            uid = int(value)
        elif key == "--gid":
            gid = int(value)
        elif key == "--cgroup":
            cgroups.append(value)
        elif key == "--netns":
            netns = value
        elif key == "--tap":
            taps.append(value)
        elif key == "--listen":
            listens.append(value)
        else:
            print(f"qemu_exec: unknown option {key}", file=sys.stderr)
            return 2
    if uid <= 0 or gid <= 0 or not command or not os.path.isabs(command[0]):
        print("qemu_exec: --uid and --gid (not root) and a command by its absolute path are"
              " required", file=sys.stderr)
        return 2
    for cgroup in cgroups:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            print(f"warning: qemu_exec: cannot join cgroup {cgroup}: {e}", file=sys.stderr)
    try:
        if netns:  # after the cgroups (their file system is this mount namespace's)
            enter_netns(netns)
        for slot, name in _pairs(taps):
            _place(open_tap(name), slot)
        for slot, path in _pairs(listens):
            _place(_listen(path), slot)
    except OSError as e:
        print(f"qemu_exec: {e}", file=sys.stderr)
        return 1
    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: becomes QEMU
        os.close(rd)
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # stdout is the pipe the agent reads our pid from: not QEMU's
            os.close(null)
            os.umask(0o077)
            os.chdir("/")  # hold no directory of the agent's busy
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            _no_new_privs()
            os.execv(command[0], command)
        except BaseException as e:  # whatever it is, the parent must hear it
            os.write(wr, f"cannot exec {command[0]} as uid {uid}: {e}".encode())
        os._exit(127)
    os.close(wr)
    with os.fdopen(rd, "rb") as pipe:
        error = pipe.read().decode(errors="replace")  # EOF at the exec: it closed the pipe
    if error:
        os.waitpid(pid, 0)
        print(f"qemu_exec: {error}", file=sys.stderr)
        return 127
    print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
