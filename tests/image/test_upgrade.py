"""State on its own volume survives replacing the image, and a power cut on the way.

The appliance boots with a state volume attached and no certificate: it makes
its dev PKI and prints the root on the serial console. Webhooks are queued,
the power is cut, and a fresh copy of the image boots on the same state
volume with no credentials at all: the same root, the same tenant, every
webhook that got a 200.
"""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.image.conftest import (
    CHECKOUT,
    Guest,
    copy_disk,
    signed_post,
    take,
    tenants_credential,
)
from tests.support.bodies import webhook_body

TENANT = "shop-7"
SECRET = secrets.token_hex(16)
TOKEN = "lrb_" + secrets.token_urlsafe(32)
PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?\n-----END CERTIFICATE-----\n", re.S)
#: Provisioning's lines as journald forwards them to the console, among systemd's own:
#: "[   20.25] linerelay-provision[273]: TEXT".
PROVISION_LINE = re.compile(r"^\[\s*[\d.]+\] linerelay-provision\[\d+\]: (.*)$", re.M)


def test_state_survives_an_image_replacement(
    image: Path, tmp_path: Path, guests: list[Guest]
) -> None:
    state = tmp_path / "state.raw"
    subprocess.run(
        [sys.executable, "-m", "image.build", "state-disk", str(state)], cwd=CHECKOUT, check=True
    )
    old = Guest(
        image,
        copy_disk(image / "disk.raw", tmp_path / "old.raw"),
        {"linerelay.tenants": tenants_credential((TENANT, SECRET, TOKEN))},
        tmp_path,
        extra_disks=(state,),
    )
    guests.append(old.start())
    root = tmp_path / "root.pem"

    def printed_root() -> str | None:
        said = "".join(line + "\n" for line in PROVISION_LINE.findall(old.console()))
        found = PEM.findall(said)
        return found[-1] if found else None

    # The dev PKI's root is on the console before the relay serves with it.
    deadline_root = old.started + 240
    while printed_root() is None:
        assert time.monotonic() < deadline_root, old.console()
        time.sleep(0.5)
    root.write_text(str(printed_root()))
    old.wait_tls(root)

    bodies = [webhook_body(f"upgrade {i}") for i in range(10)]
    for body in bodies:
        assert signed_post(old, root, TENANT, SECRET, body).status_code == 200
    old.kill()

    new = Guest(
        image,
        copy_disk(image / "disk.raw", tmp_path / "new.raw"),
        {},
        tmp_path,
        extra_disks=(state,),
    )
    guests.append(new.start())
    new.wait_tls(root)  # the same dev root: it lives on the state volume
    frames = take(new, root, TOKEN, len(bodies))
    assert [f["body"].encode() for f in frames] == bodies
    assert frames[0]["tenant"] == TENANT
    # No operator key was given to this appliance: no sshd behind port 22.
    with socket.create_connection(("127.0.0.1", new.ssh_port), timeout=10) as ssh:
        ssh.settimeout(10)
        try:
            banner = ssh.recv(64)
        except OSError:
            banner = b""
    assert not banner.startswith(b"SSH-")
    console = old.console() + new.console()
    for secret in (SECRET, TOKEN):
        assert secret not in console
