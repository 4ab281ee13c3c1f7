"""The OCI runtime spec of a function's container: the isolation it promises."""

from __future__ import annotations

import dataclasses
import uuid

from bismuth_agent.spec import IDLE_COMMAND, ContainerPlan, IdMapping, container_spec, process
from bismuth_core.definition import parse_definition

CID = uuid.UUID(int=7)
FID = uuid.UUID(int=9)


def plan(**changes):
    raw = {
        "image": "bismuth.local/python:3.11",
        "cpu": 0.5,
        "memory": 128 << 20,
        "invoke_mode": {"Server": [["/usr/bin/python3", "-m", "http.server"], 8000]},
    }
    raw.update(changes)
    return ContainerPlan(
        container_id=CID,
        function_id=FID,
        definition=parse_definition(raw),
        auth_token="s3cret",
        ids=IdMapping(host_start=200_000),
        cgroup_parent="/bismuth-10.0.0.5/",
        etc_files={"/etc/hosts": "/var/lib/bismuth/c/hosts"},
    )


def test_every_namespace_is_new_and_ids_are_mapped_to_an_unprivileged_range():
    spec = container_spec(plan())
    kinds = {ns["type"] for ns in spec["linux"]["namespaces"]}
    assert kinds == {"cgroup", "ipc", "mount", "network", "pid", "user", "uts"}
    assert all("path" not in ns for ns in spec["linux"]["namespaces"])
    mapping = [{"containerID": 0, "hostID": 200_000, "size": 65536}]
    assert spec["linux"]["uidMappings"] == mapping == spec["linux"]["gidMappings"]


def test_namespaces_the_agent_made_are_joined_by_path():
    joined = {"user": "/var/lib/bismuth/ns/u", "network": "/var/lib/bismuth/ns/n"}
    spec = container_spec(dataclasses.replace(plan(), joined=joined))
    paths = {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}
    assert paths == {
        "cgroup": None,
        "ipc": None,
        "mount": None,
        "network": "/var/lib/bismuth/ns/n",
        "pid": None,
        "user": "/var/lib/bismuth/ns/u",
        "uts": None,
    }
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200_000, "size": 65536}]


def test_process_is_unprivileged_with_the_contract_environment():
    proc = container_spec(plan())["process"]
    assert proc["user"]["uid"] == 1000 and proc["user"]["gid"] == 1000
    assert proc["noNewPrivileges"] is True
    assert all(caps == [] for caps in proc["capabilities"].values())
    env = dict(item.split("=", 1) for item in proc["env"])
    assert env["BISMUTH_AUTH"] == "s3cret"
    assert env["BISMUTH_CONTAINER_ID"] == str(CID)
    assert env["BISMUTH_FUNCTION_ID"] == str(FID)
    assert proc["args"] == ["/usr/bin/python3", "-m", "http.server"]
    assert proc["cwd"] == "/"


def test_limits_cgroup_and_kernel_paths():
    linux = container_spec(plan(cpu=0.25, memory=64 << 20))["linux"]
    assert linux["resources"]["cpu"] == {"quota": 25_000, "period": 100_000}
    assert linux["resources"]["memory"]["limit"] == 64 << 20
    assert linux["resources"]["pids"]["limit"] > 0
    assert linux["cgroupsPath"] == f"/bismuth-10.0.0.5/{CID}"
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]


def test_hostname_etc_files_and_readonly_sysfs():
    spec = container_spec(plan())
    assert spec["hostname"] == str(CID)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert by_dest["/etc/hosts"]["source"] == "/var/lib/bismuth/c/hosts"
    assert "ro" in by_dest["/etc/hosts"]["options"]
    assert "ro" in by_dest["/sys"]["options"]


def test_executable_functions_idle_and_repo_sets_the_working_directory():
    p = plan(invoke_mode={"Executable": ["/bin/cat"]}, repo=["https://g.example/r.git", "main"])
    p = dataclasses.replace(p, repo_dir="/var/lib/bismuth/agent/c/repo")
    spec = container_spec(p)
    repo = next(m for m in spec["mounts"] if m["destination"] == "/repo")
    assert repo["source"] == "/var/lib/bismuth/agent/c/repo" and "ro" in repo["options"]
    proc = spec["process"]
    assert tuple(proc["args"]) == IDLE_COMMAND
    assert proc["cwd"] == "/repo"
    assert process(p, ("/bin/cat",))["args"] == ["/bin/cat"]


def test_root_is_read_only_and_tmp_lives_inside_the_memory_limit():
    spec = container_spec(plan(memory=96 << 20))
    assert spec["root"]["readonly"] is True
    tmp = next(m for m in spec["mounts"] if m["destination"] == "/tmp")
    assert tmp["type"] == "tmpfs" and f"size={96 << 20}" in tmp["options"]


def test_the_seccomp_profile_is_the_containers_filter():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    spec = container_spec(dataclasses.replace(plan(), seccomp=profile))
    assert spec["linux"]["seccomp"] == profile
    assert "seccomp" not in container_spec(plan())["linux"]


def test_an_init_runs_as_pid_1_read_only_and_execs_need_none():
    with_init = dataclasses.replace(plan(), init="/usr/bin/tini-static")
    spec = container_spec(with_init)
    assert spec["process"]["args"] == ["/dev/init", "--", "/usr/bin/python3", "-m", "http.server"]
    (mount,) = [m for m in spec["mounts"] if m["destination"] == "/dev/init"]
    assert mount["source"] == "/usr/bin/tini-static"
    assert "ro" in mount["options"] and "rbind" in mount["options"]
    assert process(with_init, ("/bin/ls",))["args"] == ["/bin/ls"]  # an exec: no init
    without = container_spec(plan())
    assert without["process"]["args"][0] == "/usr/bin/python3"
    assert "/dev/init" not in {m["destination"] for m in without["mounts"]}
