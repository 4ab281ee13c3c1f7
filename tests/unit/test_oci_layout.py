"""The base image build without root: OCI layout wrapping, apt sources, mmdebstrap's inputs.

A small root filesystem tar is generated here and wrapped; the archive is then read back with
``tarfile``, ``gzip`` and ``json`` only (not through the code under test) and checked against
the OCI image-layout spec: every blob named by its sha256, the diff_id that of the
uncompressed layer, media types, annotations and the image config's runtime defaults.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bismuth_images.archive import inspect_archive, open_layer, wrap_rootfs
from bismuth_images.build import BuildOptions, default_output, existing_image, host_architecture
from bismuth_images.oci import (
    ContainerDefaults,
    ImageError,
    ImageReference,
    Platform,
    platform_for_dpkg,
)
from bismuth_images.rootfs import RootfsSpec, check_rootfs, customize_hooks, mmdebstrap_command
from bismuth_images.sources import (
    AptSource,
    host_sources,
    mirror_lines,
    parse_deb822,
    parse_one_line,
    select_sources,
)

REFERENCE = ImageReference.parse("bismuth.local/python:3.11")
AMD64 = Platform("amd64")
CREATED = "2024-01-02T03:04:05Z"
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "bismuth:x:1000:1000:Bismuth function user:/home/bismuth:/bin/sh\n"
)
SPEC = RootfsSpec("bookworm", ("deb http://mirror.test/debian bookworm main",), "amd64")


def add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = len(data), 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def make_rootfs(path: Path, *, extra: tuple[str, ...] = (), owner: int = 1000) -> Path:
    """A tiny tree shaped like mmdebstrap's output (``./`` prefixes, a python, a user)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("./", "./etc", "./usr", "./usr/bin", "./usr/lib", "./home"):
            add(tar, directory)
        add(tar, "./usr/bin/python3.11", b"\x7fELF not really" * 1000, mode=0o755)
        add(tar, "./usr/bin/python3", type=tarfile.SYMTYPE, linkname="python3.11")
        add(tar, "./usr/lib/python3.11/http/server.py", b"# http.server\n")
        add(tar, "./etc/passwd", PASSWD.encode())
        add(tar, "./home/bismuth", uid=owner, gid=owner)
        add(tar, "./repo", uid=owner, gid=owner)
        for name in extra:
            add(tar, name, b"")
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs.tar")


@pytest.fixture
def archive(tmp_path: Path, rootfs: Path) -> Path:
    out = tmp_path / "out" / "python-3.11.oci.tar"
    wrap_rootfs(rootfs, out, REFERENCE, AMD64, created=CREATED, created_by="test")
    return out


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def blob(files: dict[str, bytes], digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    assert algorithm == "sha256"
    return files[f"blobs/sha256/{hexdigest}"]


def documents(files: dict[str, bytes]) -> tuple[dict, dict, dict]:
    index = json.loads(files["index.json"])
    manifest = json.loads(blob(files, index["manifests"][0]["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    return index, manifest, config


# --- the archive ----------------------------------------------------------------------------


def test_archive_holds_exactly_the_layout_entries_sorted_with_fixed_metadata(archive):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-2:] == ["index.json", "oci-layout"]
    assert len([n for n in names if n.startswith("blobs/sha256/")]) == 3
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    assert oct(os.stat(archive).st_mode & 0o777) == "0o644"


def test_every_blob_is_named_by_its_sha256_and_descriptors_give_true_sizes(archive):
    files = read_archive(archive)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index, manifest, _ = documents(files)
    descriptors = [index["manifests"][0], manifest["config"], *manifest["layers"]]
    for descriptor in descriptors:
        assert len(blob(files, descriptor["digest"])) == descriptor["size"]


def test_diff_id_is_the_digest_of_the_uncompressed_layer(archive, rootfs):
    files = read_archive(archive)
    _, manifest, config = documents(files)
    (layer,) = manifest["layers"]
    compressed = blob(files, layer["digest"])
    assert gzip.decompress(compressed) == rootfs.read_bytes()
    diff_id = "sha256:" + hashlib.sha256(rootfs.read_bytes()).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert layer["digest"] != diff_id
    assert compressed[:2] == b"\x1f\x8b" and compressed[8] == 4  # gzip, fastest level


def test_media_types_and_names_follow_the_oci_spec(archive):
    files = read_archive(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index, manifest, _ = documents(files)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {
        "org.opencontainers.image.ref.name": "3.11",
        "io.containerd.image.name": "bismuth.local/python:3.11",
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [x["mediaType"] for x in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]


def test_config_gives_platform_and_runtime_defaults(archive):
    _, _, config = documents(read_archive(archive))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["created"] == CREATED
    assert config["history"] == [{"created": CREATED, "created_by": "test"}]
    runtime = config["config"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in runtime["Env"]
    assert runtime["WorkingDir"] == "/"
    assert runtime["User"] == "1000:1000"
    assert runtime["Cmd"] == ["/usr/bin/python3"]


def test_same_rootfs_and_inputs_give_a_byte_identical_archive(tmp_path, rootfs, archive):
    again = tmp_path / "again.oci.tar"
    wrap_rootfs(rootfs, again, REFERENCE, AMD64, created=CREATED, created_by="test")
    assert again.read_bytes() == archive.read_bytes()


def test_arm64_variant_and_custom_defaults_reach_index_and_config(tmp_path, rootfs):
    out = tmp_path / "arm.oci.tar"
    defaults = ContainerDefaults(env=("PATH=/bin",), user="", cmd=())
    wrap_rootfs(rootfs, out, REFERENCE, platform_for_dpkg("arm64"), defaults)
    index, _, config = documents(read_archive(out))
    assert index["manifests"][0]["platform"] == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
    }
    assert (config["variant"], config["config"]["Env"]) == ("v8", ["PATH=/bin"])
    assert "created" not in config and config["history"] == []


def test_inspect_summarizes_what_wrap_wrote(tmp_path, rootfs):
    out = tmp_path / "img.oci.tar"
    written = wrap_rootfs(rootfs, out, REFERENCE, AMD64)
    assert inspect_archive(out, "bismuth.local/python:3.11") == written
    assert written.reference == "bismuth.local/python:3.11"
    with open_layer(out) as layer:
        names = {m.name.removeprefix("./") for m in layer}
    assert {"usr/bin/python3", "etc/passwd", "repo"} <= names


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip_layer_byte", "does not match its descriptor"),
        ("truncate", "not a readable tar archive|has no"),
        ("not_a_tar", "not a readable tar archive"),
        ("other_name", "not 'bismuth.local/python:3.11'"),
    ],
)
def test_inspect_rejects_a_damaged_or_foreign_archive(tmp_path, rootfs, archive, damage, message):
    data = bytearray(archive.read_bytes())
    if damage == "flip_layer_byte":
        with tarfile.open(archive) as tar:
            layer = max(tar.getmembers(), key=lambda m: m.size)
        data[layer.offset_data + layer.size // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "not_a_tar":
        data = bytearray(b"plain text, not an archive\n" * 100)
    else:
        other = ImageReference.parse("bismuth.local/other:1")
        wrap_rootfs(rootfs, archive, other, AMD64)
        data = bytearray(archive.read_bytes())
    archive.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=message):
        inspect_archive(archive, "bismuth.local/python:3.11")


def test_existing_valid_archive_is_kept_and_a_damaged_one_is_not(tmp_path, rootfs):
    out = tmp_path / "img.oci.tar"
    arch = host_architecture()
    wrap_rootfs(rootfs, out, REFERENCE, platform_for_dpkg(arch))
    options = BuildOptions(output=out)
    assert existing_image(options, arch) == inspect_archive(out)
    assert existing_image(BuildOptions(output=out, force=True), arch) is None
    assert existing_image(options, "arm64" if arch != "arm64" else "amd64") is None
    out.write_bytes(out.read_bytes()[:1000])
    assert existing_image(options, arch) is None


# --- names and platforms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dpkg", "platform"),
    [
        ("amd64", Platform("amd64")),
        ("arm64", Platform("arm64", variant="v8")),
        ("armhf", Platform("arm", variant="v7")),
        ("i386", Platform("386")),
        ("ppc64el", Platform("ppc64le")),
    ],
)
def test_dpkg_architectures_map_to_oci_platforms(dpkg, platform):
    assert platform_for_dpkg(dpkg) == platform


def test_unknown_architecture_and_untagged_references_are_refused():
    with pytest.raises(ImageError, match="sparc"):
        platform_for_dpkg("sparc")
    for bad in ("bismuth.local/python", "registry:5000/python", "python:"):
        with pytest.raises(ImageError, match="needs a tag"):
            ImageReference.parse(bad)
    assert ImageReference.parse("registry:5000/python:3.11").tag == "3.11"


def test_default_output_is_named_after_the_image_under_var_images():
    path = default_output("bismuth.local/python:3.11")
    assert path.parts[-3:] == ("var", "images", "python-3.11.oci.tar")


# --- apt sources ----------------------------------------------------------------------------

ONE_LINE = (
    (
        "# the main archive\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg by-hash=yes] "
        "http://m.test/debian bookworm main contrib\n"
    )
    + """\
deb-src http://m.test/debian bookworm main
deb http://m.test/debian bookworm-updates main  # fixes
deb http://other.test/ubuntu jammy main
"""
)

DEB822 = """\
Types: deb deb-src
# http://snapshot.test/archive/debian/20250520T000000Z
URIs: http://deb.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.test/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UIXgJ0OIXFhIfd
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
Enabled: no
URIs: http://disabled.test/debian
Suites: bookworm
Components: main
"""


def test_one_line_sources_keep_deb_entries_and_useful_options():
    assert parse_one_line(ONE_LINE) == [
        AptSource(
            "http://m.test/debian",
            "bookworm",
            ("main", "contrib"),
            (("arch", "amd64"), ("signed-by", "/usr/share/keyrings/debian.gpg")),
        ),
        AptSource("http://m.test/debian", "bookworm-updates", ("main",)),
        AptSource("http://other.test/ubuntu", "jammy", ("main",)),
    ]


def test_deb822_sources_expand_suites_and_drop_inline_keys_and_disabled_stanzas():
    keyring = (("signed-by", "/usr/share/keyrings/debian-archive-keyring.gpg"),)
    assert parse_deb822(DEB822) == [
        AptSource("http://deb.test/debian", "bookworm", ("main",), keyring),
        AptSource("http://deb.test/debian", "bookworm-updates", ("main",), keyring),
        AptSource("http://deb.test/debian-security", "bookworm-security", ("main",)),
    ]


def test_host_sources_read_list_and_sources_files_and_ignore_others(tmp_path):
    parts = tmp_path / "etc/apt/sources.list.d"
    parts.mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text("deb http://a.test/debian bookworm main\n")
    (parts / "b.list").write_text("deb http://b.test/debian bookworm main\n")
    (parts / "c.sources").write_text(DEB822)
    (parts / "d.list.disabled").write_text("deb http://d.test/debian bookworm main\n")
    uris = [s.uri for s in host_sources(tmp_path)]
    assert uris[:2] == ["http://a.test/debian", "http://b.test/debian"]
    assert "http://deb.test/debian-security" in uris
    assert "http://d.test/debian" not in uris


def test_selected_sources_are_the_suite_then_its_updates_then_security():
    chosen = select_sources(parse_deb822(DEB822) + parse_one_line(ONE_LINE), "bookworm")
    assert [(s.uri, s.suite) for s in chosen] == [
        ("http://deb.test/debian", "bookworm"),
        ("http://m.test/debian", "bookworm"),
        ("http://deb.test/debian", "bookworm-updates"),
        ("http://m.test/debian", "bookworm-updates"),
        ("http://deb.test/debian-security", "bookworm-security"),
    ]
    assert chosen[0].line() == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.test/debian bookworm main"
    )


def test_no_source_for_the_suite_asks_for_a_mirror():
    with pytest.raises(ImageError, match=r"no apt source for suite 'bookworm'.*--mirror"):
        select_sources(parse_one_line("deb http://u.test/ubuntu jammy main\n"), "bookworm")


def test_mirror_option_takes_uris_and_whole_lines():
    assert mirror_lines(
        ["http://m.test/debian", "deb http://s.test/ bookworm-security main"], "bookworm"
    ) == [
        "deb http://m.test/debian bookworm main",
        "deb http://s.test/ bookworm-security main",
    ]
    with pytest.raises(ImageError, match="neither a URI"):
        mirror_lines(["m.test"], "bookworm")


# --- mmdebstrap's inputs and the root filesystem check ----------------------------------------


def test_mmdebstrap_command_builds_the_essential_tree_as_a_tar_on_stdout():
    command = mmdebstrap_command(SPEC)
    assert command[:3] == ["mmdebstrap", "--variant=essential", "--include=python3"]
    assert "--architectures=amd64" in command
    assert command[-3:] == ["bookworm", "-", "deb http://mirror.test/debian bookworm main"]
    for excluded in ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*"):
        assert f"--dpkgopt=path-exclude={excluded}" in command


def test_file_hooks_add_the_user_and_neutral_host_files(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    # Everything but the chown of /home/bismuth and /repo (root only; the integration test
    # checks those in the real image).
    for hook in customize_hooks(SPEC):
        if not hook.startswith("install "):
            subprocess.run(["sh", "-c", hook, "sh", str(tmp_path)], check=True)
    assert (etc / "passwd").read_text().splitlines()[-1] == (
        "bismuth:x:1000:1000:Bismuth function user:/home/bismuth:/bin/sh"
    )
    assert (etc / "group").read_text().splitlines()[-1] == "bismuth:x:1000:"
    assert not (etc / "shadow").exists()
    assert (etc / "resolv.conf").read_text() == ""
    assert (etc / "hostname").read_text() == "bismuth\n"
    assert "127.0.0.1\tlocalhost" in (etc / "hosts").read_text()


def test_check_rootfs_accepts_a_good_tree(rootfs):
    assert check_rootfs(rootfs, SPEC, "3.11") == []


def test_check_rootfs_names_every_problem(tmp_path):
    bad = make_rootfs(
        tmp_path / "bad.tar", extra=("./dev/null", "./var/lib/apt/lists/x_Packages"), owner=0
    )
    problems = check_rootfs(bad, SPEC, "3.12")
    assert problems == [
        "dev/null must not be in the image",
        "var/lib/apt/lists/x_Packages must not be in the image",
        "usr/lib/python3.12/http/server.py is missing",
        "/home/bismuth is not owned by the user",
        "/repo is not owned by the user",
    ]
