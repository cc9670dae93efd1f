"""The shipped proxy configs (deploy/nginx.conf, deploy/Caddyfile) run for real, with TLS, on loopback.

Each config is copied into a temporary folder with only its ports, file paths and certificate
rewritten (a self-signed certificate made here with openssl), and the real nginx or Caddy binary
serves it, unprivileged ports chosen free. Used by ``tests/test_proxies.py`` and
``tests/bench_slow_clients.py``. Not part of the product.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from servers import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROXIES = ("nginx", "caddy")
BINARIES = {"nginx": "nginx", "caddy": "caddy"}


def binary(kind: str) -> str | None:
    """The proxy's executable (also looked for in /usr/sbin, which is not on every PATH)."""
    return shutil.which(BINARIES[kind]) or shutil.which(BINARIES[kind], path="/usr/sbin:/usr/bin")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost and 127.0.0.1: (cert, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def nginx_config(app_port: int, https_port: int, http_port: int, folder: Path, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with its ports, log and certificate paths rewritten, inside a minimal main config."""
    text = (DEPLOY / "nginx.conf").read_text()
    text = text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};")
    text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
    text = text.replace("/var/log/nginx/advbias.log", str(folder / "access.log"))
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)
    (folder / "advbias.conf").write_text(text)
    temp = "\n".join(f"    {name}_temp_path {folder / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
            f"events {{ worker_connections 512; }}\nhttp {{\n{temp}\n    include {folder / 'advbias.conf'};\n}}\n")


def caddy_config(app_port: int, https_port: int, http_port: int, folder: Path, cert: Path, key: Path) -> str:
    """deploy/Caddyfile with its ports, log path and certificate rewritten (and no admin endpoint)."""
    text = (DEPLOY / "Caddyfile").read_text()
    text = text.replace("{\n\tservers {", f"{{\n\tadmin off\n\thttp_port {http_port}\n\thttps_port {https_port}\n"
                        f"\tstorage file_system {folder / 'data'}\n\tservers {{", 1)
    text = text.replace("study.example.org {", f"localhost:{https_port}, 127.0.0.1:{https_port} {{\n\ttls {cert} {key}", 1)
    text = text.replace("reverse_proxy 127.0.0.1:8000", f"reverse_proxy 127.0.0.1:{app_port}")
    text = text.replace("/var/log/caddy/advbias.log", str(folder / "access.log"))
    return text


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the proxy did not listen on {port} within {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def running_proxy(kind: str, app_port: int, folder: Path) -> Iterator[int]:
    """Serve the shipped ``kind`` config in front of ``app_port``; yields its HTTPS port."""
    exe = binary(kind)
    if exe is None:
        raise RuntimeError(f"{kind} is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(folder)
    https_port, http_port = free_port(), free_port()
    build = nginx_config if kind == "nginx" else caddy_config
    config = folder / ("nginx.conf" if kind == "nginx" else "Caddyfile")
    config.write_text(build(app_port, https_port, http_port, folder, cert, key))
    log = folder / "proxy.log"
    if kind == "nginx":
        command = [exe, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
    else:
        command = [exe, "run", "--config", str(config), "--adapter", "caddyfile"]
    env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"), "XDG_CONFIG_HOME": str(folder)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    try:
        _wait_listening(https_port, process, log)
        yield https_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
