"""Derive the containers' seccomp profiles from containerd's own default, plus our denials.

containerd ships its default profile as Go code in Debian's
``golang-github-containerd-containerd-dev`` (``contrib/seccomp/seccomp_default.go``, with the
runtime spec's constants in ``golang-github-opencontainers-specs-dev`` and the kernel's in
``golang-golang-x-sys-dev``). This evaluates its ``DefaultProfile`` for our containers (no
capabilities at all, a kernel >= 4.8, each architecture below), turns the result into the
runtime spec's JSON as Go would marshal it, then applies Bismuth's changes:

- ``DENIED`` (io_uring, keyrings, bpf, perf events, userfaultfd) fail with EPERM: removed
  from every rule that allows them and listed in one rule of their own;
- only the host's own system call entry is allowed (``NATIVE``): containerd's profile also
  admits the 32-bit and x32 entries on amd64 and 32-bit ARM on arm64, which our images do
  not use; a call through one of them kills the calling thread. Each architecture more in
  the filter also costs runc about 5 ms compiling it at every container start;
- user namespaces stay impossible, as containerd's profile makes them without
  CAP_SYS_ADMIN: ``unshare`` and ``setns`` are not allowed, ``clone`` only without any
  ``CLONE_NEW*`` flag, ``clone3`` fails with ENOSYS (so libc falls back to ``clone``, whose
  flags can be checked). The generator fails if the source stops saying so.

``python -m bismuth_agent.seccomp.generate`` rewrites the committed profiles;
``--check`` only compares (exit 1 on a difference). The test suite does the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .gosource import Environment, GoFile, Struct

GOCODE = Path("/usr/share/gocode/src")
SOURCE = "github.com/containerd/containerd/contrib/seccomp/seccomp_default.go"
SPECS = "github.com/opencontainers/runtime-spec/specs-go/config.go"
UNIX = "golang.org/x/sys/unix"
ARCHES = ("amd64", "arm64")  # GOARCH names; a profile for each
NATIVE = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}  # their own entries
HERE = Path(__file__).resolve().parent
EPERM = 1

DENIED = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
)
_NEW_NAMESPACE_FLAGS = (
    "CLONE_NEWNS",
    "CLONE_NEWUTS",
    "CLONE_NEWIPC",
    "CLONE_NEWUSER",
    "CLONE_NEWPID",
    "CLONE_NEWNET",
    "CLONE_NEWCGROUP",
)


class ProfileError(Exception):
    """The source cannot be read, or no longer denies what we rely on it to deny."""


def profile_path(arch: str) -> Path:
    return HERE / f"{arch}.json"


def constants(gocode: Path, arch: str) -> dict[str, Any]:
    """``specs.*`` string constants and ``unix.*`` integer constants for ``arch``."""
    found: dict[str, Any] = {}
    spec_text = (gocode / SPECS).read_text()
    for match in re.finditer(r'^\s*(\w+)\s+\w+\s*=\s*"([^"]*)"', spec_text, re.M):
        found[f"specs.{match[1]}"] = match[2]
    number = r"^\s*(\w+)\s*=\s*(?:syscall\.Errno\()?(0x[0-9a-fA-F]+|\d+)\)?\s*$"
    for name in ("zerrors_linux.go", f"zerrors_linux_{arch}.go"):
        for match in re.finditer(number, (gocode / UNIX / name).read_text(), re.M):
            found[f"unix.{match[1]}"] = int(match[2], 0)
    return found


def json_fields(gocode: Path) -> dict[str, list[tuple[str, str, bool, bool]]]:
    """Per struct of the runtime spec: (Go field, JSON name, omitempty, pointer) in order."""
    tables: dict[str, list[tuple[str, str, bool, bool]]] = {}
    text = (gocode / SPECS).read_text()
    for struct in re.finditer(r"^type (\w+) struct \{\n(.*?)^\}", text, re.M | re.S):
        rows = re.findall(r'^\s*(\w+)\s+(\*?)\S+\s+`json:"([^"]+)"`', struct[2], re.M)
        tables[struct[1]] = [
            (go, tag.split(",")[0], "omitempty" in tag.split(",")[1:], bool(star))
            for go, star, tag in rows
        ]
    return tables


def containerd_default(gocode: Path, arch: str) -> dict[str, Any]:
    """containerd's ``DefaultProfile`` for a container without capabilities, as JSON."""
    values = constants(gocode, arch)
    values["runtime.GOARCH"] = arch
    values["sp.Process.Capabilities.Bounding"] = []
    env = Environment(values, {"kernelversion.GreaterEqualThan": lambda _version: (True, None)})
    result = GoFile((gocode / SOURCE).read_text(), env).call("DefaultProfile")
    return _marshal(result, "LinuxSeccomp", json_fields(gocode))


def _marshal(value: Any, type_name: str, tables: dict[str, Any]) -> Any:
    """``value`` as Go's encoding/json writes it (field order, omitempty)."""
    if isinstance(value, list):
        return [_marshal(item, type_name, tables) for item in value]
    if not isinstance(value, Struct):
        return value
    out: dict[str, Any] = {}
    element_types = {"Syscalls": "LinuxSyscall", "Args": "LinuxSeccompArg"}
    for go, name, omitempty, pointer in tables[value.type or type_name]:
        item = value.fields.get(go)
        empty = item is None or (not pointer and item in ("", 0, [], False))
        if omitempty and empty:
            continue
        out[name] = _marshal(item, element_types.get(go, type_name), tables)
    return out


def bismuth_profile(base: dict[str, Any], clone_flags: int, arch: str) -> dict[str, Any]:
    """containerd's profile for ``arch`` with ``DENIED`` taken out of its rules and denied
    with EPERM, and only the architecture's native entry."""
    _check_user_namespaces_denied(base, clone_flags)
    if NATIVE[arch] not in base["architectures"]:
        raise ProfileError(f"containerd's {arch} profile does not list {NATIVE[arch]}")
    syscalls = []
    for rule in base["syscalls"]:
        names = [n for n in rule["names"] if n not in DENIED]
        if names:
            syscalls.append({**rule, "names": names})
    syscalls.append({"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})
    return {**base, "architectures": [NATIVE[arch]], "syscalls": syscalls}


def _check_user_namespaces_denied(profile: dict[str, Any], clone_flags: int) -> None:
    allowed = [r for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"]
    for name in ("unshare", "setns", "clone3", "mount"):
        if any(name in r["names"] for r in allowed):
            raise ProfileError(f"containerd's profile now allows {name}: review the sandbox")
    for rule in allowed:
        if "clone" not in rule["names"]:
            continue
        masks = [a for a in rule.get("args", []) if a["op"] == "SCMP_CMP_MASKED_EQ"]
        checked = [a["value"] & clone_flags == clone_flags for a in masks if not a.get("valueTwo")]
        if not any(checked):
            raise ProfileError("containerd's profile allows clone with CLONE_NEW* flags")


def generate(gocode: Path, arch: str) -> dict[str, Any]:
    try:
        base = containerd_default(gocode, arch)
        flags = constants(gocode, arch)
    except OSError as exc:
        raise ProfileError(
            f"cannot read {exc.filename}: install golang-github-containerd-containerd-dev"
        ) from None
    clone_flags = 0
    for name in _NEW_NAMESPACE_FLAGS:
        clone_flags |= flags[f"unix.{name}"]
    return bismuth_profile(base, clone_flags, arch)


def render(profile: dict[str, Any]) -> str:
    return json.dumps(profile, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bismuth_agent.seccomp.generate")
    parser.add_argument("--gocode", type=Path, default=GOCODE, help="Go sources (Debian's)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    stale: list[Path] = []
    for arch in ARCHES:
        text = render(generate(args.gocode, arch))
        path = profile_path(arch)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
    for path in stale:
        print(f"{path} differs from what the Go source gives", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
