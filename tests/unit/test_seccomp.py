"""The containers' seccomp profile: derived from containerd's Go source, plus our denials."""

from __future__ import annotations

from pathlib import Path

import pytest

from bismuth_agent import seccomp
from bismuth_agent.seccomp import generate
from bismuth_agent.seccomp.gosource import Environment, GoFile, GoSourceError

SOURCE = generate.GOCODE / generate.SOURCE


@pytest.mark.parametrize("arch", generate.ARCHES)
def test_committed_profile_is_what_the_go_source_gives(arch: str) -> None:
    assert SOURCE.exists(), "golang-github-containerd-containerd-dev is not installed"
    fresh = generate.render(generate.generate(generate.GOCODE, arch))
    assert generate.profile_path(arch).read_text() == fresh
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("arch", generate.ARCHES)
def test_denied_calls_fail_with_eperm_and_no_rule_allows_them(arch: str) -> None:
    profile = seccomp.profile(arch)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"  # anything not listed: EPERM
    rules = profile["syscalls"]
    allowed = {n for r in rules if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    denied = {"io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key"}
    denied |= {"request_key", "bpf", "perf_event_open", "userfaultfd"}
    assert not allowed & denied
    (rule,) = [r for r in profile["syscalls"] if set(r["names"]) == denied]
    assert (rule["action"], rule["errnoRet"]) == ("SCMP_ACT_ERRNO", 1)


@pytest.mark.parametrize("arch", generate.ARCHES)
def test_user_namespaces_cannot_be_made(arch: str) -> None:
    profile = seccomp.profile(arch)
    allowed = [r for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"]
    names = {n for r in allowed for n in r["names"]}
    assert not names & {"unshare", "setns", "clone3", "mount"}
    (clone,) = [r for r in allowed if "clone" in r["names"]]
    (arg,) = clone["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["value"] & 0x10000000  # CLONE_NEWUSER
    assert "valueTwo" not in arg  # masked flags must all be 0
    (clone3,) = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3["errnoRet"] == 38  # ENOSYS: libc falls back to clone


def test_ordinary_calls_stay_allowed() -> None:
    allowed = {
        n
        for r in seccomp.profile("amd64")["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }
    for name in ("read", "write", "openat", "mmap", "futex", "socket", "connect", "execve"):
        assert name in allowed
    assert seccomp.profile("amd64")["architectures"] == ["SCMP_ARCH_X86_64"]
    assert seccomp.profile("arm64")["architectures"] == ["SCMP_ARCH_AARCH64"]


def test_a_source_that_allowed_unshare_is_refused(tmp_path: Path) -> None:
    gocode = tmp_path / "src"
    for relative in (generate.SPECS, f"{generate.UNIX}/zerrors_linux.go"):
        (gocode / relative).parent.mkdir(parents=True, exist_ok=True)
        (gocode / relative).write_text((generate.GOCODE / relative).read_text())
    unix = generate.UNIX
    arch_file = f"{unix}/zerrors_linux_amd64.go"
    (gocode / arch_file).write_text((generate.GOCODE / arch_file).read_text())
    text = SOURCE.read_text().replace('"umask",', '"umask",\n"unshare",', 1)
    (gocode / generate.SOURCE).parent.mkdir(parents=True, exist_ok=True)
    (gocode / generate.SOURCE).write_text(text)
    with pytest.raises(generate.ProfileError, match="now allows unshare"):
        generate.generate(gocode, "amd64")


def test_missing_source_says_which_package(tmp_path: Path) -> None:
    with pytest.raises(generate.ProfileError, match="golang-github-containerd-containerd-dev"):
        generate.generate(tmp_path, "amd64")


GO = """
package x
func pick() []string {
    switch runtime.GOARCH {
    case "a", "b":
        return []string{"ab"}
    default:
        return []string{}
    }
}
func Build(sp *T) *R {
    n := uint(unix.TWO)
    r := &R{Names: pick(), Flags: unix.ONE | unix.TWO}
    if ok, err := pkg.Check(pkg.V{Major: 4}); err == nil {
        if ok {
            r.Names = append(r.Names, "checked")
        }
    }
    admin := false
    for _, c := range sp.Caps {
        switch c {
        case "ADMIN":
            admin = true
            r.Names = append(r.Names, "admin")
        }
    }
    if !admin {
        r.Names = append(r.Names, "plain")
    } else {
        r.Names = append(r.Names, "never")
    }
    r.Errno = &n
    return r
}
"""


@pytest.mark.parametrize(
    ("arch", "caps", "names"),
    [
        ("a", [], ["ab", "checked", "plain"]),
        ("z", [], ["checked", "plain"]),
        ("b", ["ADMIN", "OTHER"], ["ab", "checked", "admin", "never"]),
    ],
)
def test_the_go_subset_is_evaluated(arch: str, caps: list[str], names: list[str]) -> None:
    values = {"runtime.GOARCH": arch, "sp.Caps": caps, "unix.ONE": 1, "unix.TWO": 2}
    env = Environment(values, {"pkg.Check": lambda version: (version.fields["Major"] >= 4, None)})
    result = GoFile(GO, env).call("Build")
    assert result.type == "R"
    assert result.fields == {"Names": names, "Flags": 3, "Errno": 2}


def test_unknown_go_is_an_error_naming_it() -> None:
    env = Environment({}, {})
    with pytest.raises(GoSourceError, match=r"unknown name unix\.MISSING"):
        GoFile("func F() int {\n return unix.MISSING\n}\n", env).call("F")
    with pytest.raises(GoSourceError, match=r"call of unknown function os\.Exit"):
        GoFile("func F() int {\n x := os.Exit(1)\n return x\n}\n", env).call("F")
    with pytest.raises(GoSourceError, match="unsupported statement"):
        GoFile("func F() int {\n os.Exit(1)\n}\n", env).call("F")
