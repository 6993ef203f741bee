"""A real nginx serving deploy/nginx/linerelay.conf, for the tests and the benchmarks.

The example itself is served, its paths and ports substituted (every
substitution must find its text, so an edit of the example that this file
does not follow fails loudly instead of drifting), inside an ``http {}``
block with the defaults Debian's nginx.conf sets for every site.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import processes
from tests.support.relay import free_port
from tls import pki as tls_pki

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "linerelay.conf"
#: Seconds to wait for nginx to listen or stop.
TIMEOUT = 30.0


class ExampleDriftError(AssertionError):
    """deploy/nginx/linerelay.conf no longer holds a text :func:`render` substitutes."""


class NginxError(RuntimeError):
    """nginx refused the rendered config, exited, or did not listen."""


def ipv6_loopback() -> bool:
    """Whether [::1] can be listened on here."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Nginx:
    """One nginx process serving the rendered example."""

    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    directory: Path

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT``"""
        return f"https://127.0.0.1:{self.port}"

    @property
    def bridge_url(self) -> str:
        """``wss://127.0.0.1:PORT/bridge``"""
        return f"wss://127.0.0.1:{self.port}/bridge"

    def webhook_url(self, tenant: str) -> str:
        """``tenant``'s webhook URL through nginx."""
        return f"{self.base_url}/webhook/{tenant}"

    def logs(self) -> str:
        """Everything nginx logged: access and error logs, and its own output."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted((self.directory / "logs").iterdir())
            if path.is_file()
        )

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL if it hangs."""
        processes.stop(self.proc, TIMEOUT, signal.SIGQUIT)


def render(directory: Path, pki: tls_pki.DevPKI, upstream: Path, port: int, http_port: int) -> str:
    """deploy/nginx/linerelay.conf with this run's paths and ports."""
    logs, webroot = directory / "logs", directory / "acme"
    v6 = ipv6_loopback()
    substitutions = [
        (
            "listen 443 ssl http2 default_server;",
            f"listen 127.0.0.1:{port} ssl http2 default_server;",
        ),
        (
            "listen [::]:443 ssl http2 default_server;",
            f"listen [::1]:{port} ssl http2 default_server;" if v6 else "",
        ),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", f"listen [::1]:{http_port};" if v6 else ""),
        ("/etc/letsencrypt/live/relay.example.com/fullchain.pem", str(pki.chain)),
        ("/etc/letsencrypt/live/relay.example.com/privkey.pem", str(pki.key)),
        ("server unix:/run/linerelay/public.sock;", f"server unix:{upstream};"),
        ("/var/log/nginx/", f"{logs}/"),
        ("/var/www/letsencrypt", str(webroot)),
    ]
    text = EXAMPLE.read_text()
    for old, new in substitutions:
        if old not in text:
            raise ExampleDriftError(f"{EXAMPLE} no longer says {old!r}: update render()")
        text = text.replace(old, new)
    return text


def start_nginx(
    directory: Path, pki: tls_pki.DevPKI, upstream: Path, prefix: tuple[str, ...] = ()
) -> Nginx:
    """nginx with the rendered example in an http {} block like Debian's nginx.conf,
    proxying to the relay's socket ``upstream``; ``prefix`` goes before the command
    (``taskset -c 0``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "acme", "tmp"):
        (directory / sub).mkdir(exist_ok=True)
    port, http_port = free_port(), free_port()
    (directory / "linerelay.conf").write_text(render(directory, pki, upstream, port, http_port))
    # As root, nginx's workers would drop to nobody, who may not open the relay's
    # socket (mode 0660): they run as this user, as www-data in the relay's group would.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    temp = " ".join(
        f"{kind}_temp_path {directory / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "logs" / "main-error.log"};
events {{ worker_connections 1024; }}
http {{
    # What Debian's nginx.conf sets for every site, which the example overrides.
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    gzip on;
    default_type application/octet-stream;
    access_log {directory / "logs" / "main-access.log"};
    {temp}
    include {directory / "linerelay.conf"};
}}
"""
    )
    args = [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    args += ["-e", str(directory / "logs" / "startup.log")]
    checked = subprocess.run([*args, "-t"], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise NginxError(f"nginx refuses the rendered config:\n{checked.stderr}")
    with (directory / "logs" / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen([*prefix, *args], stderr=stderr)
    nginx = Nginx(proc, port, http_port, directory)

    def listening() -> bool:
        if proc.poll() is not None:
            raise NginxError(f"nginx exited with {proc.returncode}:\n{nginx.logs()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    deadline = time.monotonic() + TIMEOUT
    while not listening():
        if time.monotonic() > deadline:
            nginx.stop()
            raise NginxError(f"nginx not listening after {TIMEOUT}s:\n{nginx.logs()}")
        time.sleep(0.05)
    return nginx
