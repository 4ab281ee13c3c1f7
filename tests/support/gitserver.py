"""A git server on loopback for tests: git's own ``http-backend`` behind a small HTTPS server.

Each session makes a certificate authority and a server certificate for 127.0.0.1 (the
agent trusts the CA through its ``git_ca_file`` setting); ``GitServer.repo`` makes a bare
repository with one commit and returns its https URL. Requests run ``git http-backend`` as a
CGI program (smart HTTP, protocol v2 included). Only 127.0.0.1 is ever contacted.

Fixture (registered in ``tests/conftest.py``): ``git_server`` (session).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) files for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bismuth test CA"))
        .issuer_name(_name("bismuth test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[0].chmod(0o644)
    return paths


class _Backend(BaseHTTPRequestHandler):
    """One request: ``git http-backend`` as CGI; its headers become the response's."""

    project_root: Path

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        for header in ("Git-Protocol", "Content-Encoding"):
            if header in self.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class GitServer:
    """Bare repositories under ``root``, served over https on 127.0.0.1; ``ca_file`` signs
    the server's certificate."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bismuth-git-"))
        self.dir.chmod(0o711)
        self.root = self.dir / "repos"
        self.root.mkdir()
        self.ca_file, cert, key = make_certificates(self.dir)
        handler = type("Backend", (_Backend,), {"project_root": self.root})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def repo(self, name: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A bare repository ``<name>.git`` with one commit of ``files``; its https URL."""
        work = self.dir / "work" / name
        work.mkdir(parents=True)
        for path, data in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(data)
        git = ["git", "-C", str(work)]
        subprocess.run([*git, "init", "-q", "-b", branch], check=True, env=GIT_ENV)
        subprocess.run([*git, "add", "-A"], check=True, env=GIT_ENV)
        subprocess.run([*git, "commit", "-q", "-m", "first"], check=True, env=GIT_ENV)
        bare = self.root / f"{name}.git"
        subprocess.run(
            ["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=GIT_ENV
        )
        shutil.rmtree(work)
        return f"{self.url}/{name}.git"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def git_server() -> Iterator[GitServer]:
    server = GitServer()
    yield server
    server.close()


def tree_fingerprint(top: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``top``: (uid, gid, mode, sha256 of a file's content or '')."""
    import hashlib

    seen: dict[str, tuple[int, int, int, str]] = {}
    for directory, names, files in os.walk(top):
        for name in (*names, *files):
            path = Path(directory, name)
            info = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path.relative_to(top))] = (info.st_uid, info.st_gid, info.st_mode, digest)
    return seen
