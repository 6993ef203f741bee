"""Build the appliance image: ``python -m image.build`` (``make image``), as root.

Writes, under ``build/appliance/`` (PROTOCOL.md §5):

- ``disk.raw``: the root file system (ext4, label ``linerelay-root``) as a raw disk;
- ``vmlinuz``, ``initrd.img``: the kernel and initramfs, booted directly by qemu;
- ``qemu.args``: the extra ``qemu-system-x86_64`` arguments, one per line.

The route is the one measured in DESIGN.md ("Booting an image here"): no loop
device, no mount of the image, no boot loader. Three stages, each cached under
``build/cache/`` by a hash of what goes into it:

1. the Debian root: ``debootstrap --variant=minbase`` of bookworm with the
   packages below, bookworm-security and -updates applied, as a tarball
   (keyed by the package list and this recipe);
2. the wheelhouse: the project's runtime dependencies (keyed by
   pyproject.toml) and the project's own wheel (keyed by its sources), built on
   the host with ``pip wheel``;
3. the image: the root unpacked, configured in a clean chroot (``env -i``: the
   host's PIP_* variables would leak in otherwise), the relay installed in
   ``/opt/linerelay`` from the wheelhouse with ``--no-index``, the units from
   ``systemd/`` and the files under ``image/rootfs/`` installed, a small
   initramfs made, then ``mkfs.ext4 -d``. When the hash of every input matches
   the image already built, nothing is done.

``python -m image.build state-disk FILE`` makes an empty state volume to attach
as a second disk (docs/appliance.md, "Upgrade").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
OVERLAY = CHECKOUT / "image" / "rootfs"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
#: What the appliance runs on, beyond debootstrap's minbase (Priority: required).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",  # the initramfs's compressor: quick to unpack under emulation
    "kmod",
    "e2fsprogs",  # fsck.ext4 at boot
    "python3",
    "python3-venv",
    "sqlite3",  # online backups of the store (VACUUM INTO), docs/appliance.md
    "iproute2",  # ss: what listens
    "procps",
    "openssh-server",  # started only when an operator key is provisioned
)
#: Changes to the root stage that the package list does not show (its script, the
#: dpkg excludes from image/rootfs/etc/dpkg) bump this.
ROOTFS_RECIPE = 2
#: The relay's user and group: fixed, so a state volume keeps its owner across images.
RELAY_UID = 990
DISK_SIZE = "2G"
STATE_DISK_SIZE = "1G"
ROOT_LABEL = "linerelay-root"
STATE_LABEL = "linerelay-state"
#: Everything on the kernel command line; the root comes from the initramfs's
#: conf.d, so every line of qemu.args is one word, whichever way it is split.
KERNEL_CMDLINE = "console=ttyS0"
SOURCES = ("appliance", "tls", "bridge", "conformance", "loadtest")
UNIT_SUFFIXES = (".service", ".socket", ".path")
ENABLE = (
    "linerelay.socket",
    "linerelay-admin.socket",
    "linerelay.service",
    "linerelay-provision.service",
    "linerelay-certs.path",
    "systemd-networkd.service",
)
#: Not needed on an appliance, and each costs boot time or wakes it up.
MASK = (
    "getty.target",  # root has no password: a login prompt serves no one
    "systemd-firstboot.service",  # would prompt on the console
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "ssh.socket",
    "apparmor.service",  # no profiles to load
    "systemd-binfmt.service",
    "systemd-network-generator.service",  # networkd's .network file configures the network
    "modprobe@dm_mod.service",  # modules loaded on demand anyway
    "modprobe@loop.service",
    "modprobe@fuse.service",
)
#: Kernel module trees a headless network appliance never loads: about 170 MB,
#: a fifth of the image. Removed after dpkg installed them (an image is
#: replaced whole, never upgraded in place), then depmod.
UNUSED_MODULES = (
    "drivers/gpu",
    "sound",
    "drivers/media",
    "drivers/net/wireless",
    "net/wireless",
    "net/mac80211",
    "drivers/infiniband",
    "drivers/bluetooth",
    "net/bluetooth",
    "drivers/staging",
    "drivers/iio",
    "drivers/isdn",
)
#: Generators that find nothing to do on the appliance; each is a process run
#: before any unit starts, which under emulation is time on every boot.
MASK_GENERATORS = (
    "systemd-sysv-generator",
    "systemd-rc-local-generator",
    "systemd-gpt-auto-generator",
    "systemd-bless-boot-generator",
    "systemd-hibernate-resume-generator",
    "systemd-system-update-generator",
    "systemd-run-generator",
    "systemd-getty-generator",
    "systemd-veritysetup-generator",
    "systemd-integritysetup-generator",
    "systemd-cryptsetup-generator",
)


class BuildError(Exception):
    """The build cannot go on; the message says why."""


def main(argv: list[str] | None = None) -> int:
    """``python -m image.build [--out DIR] [--cache DIR]`` or ``... state-disk FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m image.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=CHECKOUT / "build" / "appliance")
    parser.add_argument("--cache", type=Path, default=CHECKOUT / "build" / "cache")
    sub = parser.add_subparsers(dest="command")
    state = sub.add_parser("state-disk", help="make an empty state volume to attach")
    state.add_argument("file", type=Path)
    state.add_argument("--size", default=STATE_DISK_SIZE)
    args = parser.parse_args(argv)
    try:
        if args.command == "state-disk":
            make_state_disk(args.file, args.size)
        else:
            build(args.out.resolve(), args.cache.resolve())
    except BuildError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    return 0


def build(out: Path, cache: Path) -> None:
    """Build the image into ``out``, reusing and filling ``cache``."""
    started = time.monotonic()
    _preflight()
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rootfs_key = _digest([json.dumps([SUITE, MIRROR, SECURITY_MIRROR, PACKAGES, ROOTFS_RECIPE])])
    deps_key = _digest(
        [(CHECKOUT / "pyproject.toml").read_text(), sys.version, *IMAGE_ONLY_DEPENDENCIES]
    )
    source_key = _digest_files(_source_files())
    image_key = _digest(
        [rootfs_key, deps_key, source_key, _digest_files(_image_files()), KERNEL_CMDLINE]
    )
    stamp = out / ".inputs"
    outputs = [out / name for name in ("disk.raw", "vmlinuz", "initrd.img", "qemu.args")]
    if stamp.exists() and stamp.read_text() == image_key and all(p.exists() for p in outputs):
        _write_qemu_args(out)  # the checkout may have moved
        print(f"image: up to date ({out / 'disk.raw'})")
        return
    tarball = _rootfs(cache, rootfs_key)
    wheels = _wheelhouse(cache, deps_key, source_key)
    stamp.unlink(missing_ok=True)
    root = out / "root"
    _step(f"unpacking {tarball.name}")
    _remove_tree(root)
    root.mkdir()
    _run(["tar", "-xf", str(tarball), "-C", str(root), "--numeric-owner"])
    try:
        _configure(root, wheels)
        _step("copying the kernel and initramfs out")
        shutil.copyfile(_one(root / "boot", "vmlinuz-*"), out / "vmlinuz")
        shutil.copyfile(_one(root / "boot", "initrd.img-*"), out / "initrd.img")
        _step(f"mkfs.ext4 -d ({DISK_SIZE})")
        tmp = out / "disk.raw.tmp"
        tmp.unlink(missing_ok=True)
        _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(root), str(tmp), DISK_SIZE])
        tmp.rename(out / "disk.raw")
    finally:
        _remove_tree(root)
    _write_qemu_args(out)
    stamp.write_text(image_key)
    disk = out / "disk.raw"
    used = disk.stat().st_blocks * 512
    print(
        f"image: built {disk} in {time.monotonic() - started:.0f} s: "
        f"{disk.stat().st_size / 2**30:.1f} GiB disk, {used / 2**20:.0f} MiB used; "
        f"initramfs {(out / 'initrd.img').stat().st_size / 2**20:.1f} MiB"
    )


def make_state_disk(path: Path, size: str = STATE_DISK_SIZE) -> None:
    """An empty state volume at ``path``; refuses to touch an existing file."""
    if path.exists():
        raise BuildError(f"{path} exists; it may hold an appliance's state: not touched")
    _need("mkfs.ext4")
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["mkfs.ext4", "-q", "-L", STATE_LABEL, str(path), size])
    print(
        f"image: state volume {path} ({size}); attach it with -drive if=virtio,format=raw,file={path}"
    )


# -- stage 1: the Debian root ------------------------------------------------------


def _rootfs(cache: Path, key: str) -> Path:
    tarball = cache / f"rootfs-{key[:16]}.tar"
    if tarball.exists():
        return tarball
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as scratch:
        root = Path(scratch) / "root"
        _step("debootstrap (a few minutes)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(PACKAGES),
                SUITE,
                str(root),
                MIRROR,
            ]
        )
        (root / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {SUITE} main\n"
            f"deb {MIRROR} {SUITE}-updates main\n"
            f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
        )
        exclude = OVERLAY / "etc/dpkg/dpkg.cfg.d/01-appliance"
        shutil.copyfile(exclude, root / "etc/dpkg/dpkg.cfg.d/01-appliance")
        _step("applying bookworm-security and -updates")
        with _mounted(root):
            _chroot(
                root,
                """
                apt-get update -qq
                # The image's own initramfs is made once, at the end of stage 3.
                sed -i 's/^update_initramfs=.*/update_initramfs=no/' \
                    /etc/initramfs-tools/update-initramfs.conf
                apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade
                # An update brings a new kernel beside the old: keep the one the
                # metapackage names (the image boots exactly one).
                keep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | cut -d' ' -f1)
                for pkg in $(dpkg-query -W -f='${Package}\n' 'linux-image-[0-9]*'); do
                    [ "$pkg" = "$keep" ] || apt-get -y -qq purge "$pkg"
                done
                sed -i 's/^update_initramfs=.*/update_initramfs=yes/' \
                    /etc/initramfs-tools/update-initramfs.conf
                rm -f /boot/initrd.img-*
                apt-get clean
                rm -rf /var/lib/apt/lists/*
                find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
                find /usr/share/doc -mindepth 1 -type d -empty -delete
                rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*
                """,
            )
        _step(f"caching the root as {tarball.name}")
        tmp = tarball.with_suffix(".tmp")
        _run(["tar", "-cf", str(tmp), "-C", str(root), "--numeric-owner", "."])
        tmp.rename(tarball)
        _remove_tree(root)  # debootstrap's device nodes: TemporaryDirectory may not
    return tarball


# -- stage 2: the wheelhouse -------------------------------------------------------


#: Dependencies the image's Python needs that the build host's may not: markers are
#: judged by the host's version, and Debian 12's python3 is 3.11.2 (redis-py needs
#: async-timeout below 3.11.3).
IMAGE_ONLY_DEPENDENCIES = ("async-timeout>=4.0.3",)


def _wheelhouse(cache: Path, deps_key: str, source_key: str) -> list[Path]:
    """Wheel directories: the dependencies' and the project's."""
    pyproject = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    deps_dir = cache / f"wheels-deps-{deps_key[:16]}"
    if not deps_dir.exists():
        _step("pip wheel: the runtime dependencies")
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix="wheels-"))
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "-w",
                str(tmp),
                *pyproject["project"]["dependencies"],
                *IMAGE_ONLY_DEPENDENCIES,
            ]
        )
        tmp.rename(deps_dir)
    project_dir = cache / f"wheels-linerelay-{source_key[:16]}"
    if not project_dir.exists():
        _step("pip wheel: linerelay")
        with tempfile.TemporaryDirectory(prefix="linerelay-src-") as scratch:
            # A copy of exactly the hashed files: the build leaves nothing in the checkout.
            for path in _source_files():
                target = Path(scratch) / path.relative_to(CHECKOUT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            tmp = Path(tempfile.mkdtemp(dir=cache, prefix="wheels-"))
            _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), scratch])
        tmp.rename(project_dir)
    return [deps_dir, project_dir]


def _source_files() -> list[Path]:
    files = [CHECKOUT / "pyproject.toml", CHECKOUT / "README.md"]
    for package in SOURCES:
        files += [
            p
            for p in (CHECKOUT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return sorted(files)


# -- stage 3: the image ------------------------------------------------------------


def _image_files() -> list[Path]:
    files = [p for p in OVERLAY.rglob("*") if p.is_file()]
    files += [p for p in (CHECKOUT / "systemd").iterdir() if p.suffix in UNIT_SUFFIXES]
    files.append(Path(__file__))
    return sorted(files)


def _configure(root: Path, wheels: list[Path]) -> None:
    _step("installing the relay, its units and the appliance's files")
    house = root / "tmp" / "wheels"
    house.mkdir(parents=True)
    for directory in wheels:
        for wheel in directory.glob("*.whl"):
            shutil.copy2(wheel, house / wheel.name)
    shutil.copytree(OVERLAY, root, symlinks=True, dirs_exist_ok=True)
    units = root / "usr/lib/systemd/system"
    for unit in (CHECKOUT / "systemd").iterdir():
        if unit.suffix in UNIT_SUFFIXES:
            shutil.copyfile(unit, units / unit.name)
    with _mounted(root):
        _chroot(
            root,
            f"""
            groupadd --system --gid {RELAY_UID} linerelay
            useradd --system --uid {RELAY_UID} --gid linerelay --no-create-home \\
                --home-dir /nonexistent --shell /usr/sbin/nologin linerelay
            python3 -m venv /opt/linerelay
            /opt/linerelay/bin/pip install -q --no-index --no-cache-dir \\
                --find-links /tmp/wheels linerelay
            rm -rf /tmp/wheels
            test -f /opt/linerelay/lib/python3.11/site-packages/tls/openssl.cnf
            systemctl enable {" ".join(ENABLE)}
            systemctl mask {" ".join(MASK)}
            for generator in {" ".join(MASK_GENERATORS)}; do
                ln -sf /dev/null /etc/systemd/system-generators/$generator
            done
            rm -f /etc/ssh/ssh_host_*
            passwd -q -l root
            # systemd 252 takes an empty machine-id for an initialised one.
            echo uninitialized > /etc/machine-id
            rm -f /var/lib/dbus/machine-id
            : > /etc/resolv.conf
            for kernel in /lib/modules/*; do
                for tree in {" ".join(UNUSED_MODULES)}; do rm -rf "$kernel/kernel/$tree"; done
                depmod -a "$(basename "$kernel")"
            done
            update-initramfs -c -k all
            """,
        )


def _write_qemu_args(out: Path) -> None:
    # One argument per line, and no line with a space: however a caller reads the
    # file (a line an argument, or split on white space), it gets the same words.
    args = ["-kernel", str(out / "vmlinuz"), "-initrd", str(out / "initrd.img")]
    args += ["-append", KERNEL_CMDLINE]
    if any(" " in arg for arg in args):
        raise BuildError(f"{out} has a space in its path; qemu.args must not")
    (out / "qemu.args").write_text("\n".join(args) + "\n")


# -- helpers -----------------------------------------------------------------------


def _preflight() -> None:
    if os.geteuid() != 0:
        raise BuildError("run as root (debootstrap, chroot and device nodes need it)")
    if sys.version_info[:2] != (3, 11):
        raise BuildError("build with Python 3.11: the wheels must fit Debian 12's python3")
    for tool in ("debootstrap", "chroot", "mkfs.ext4", "tar", "mount"):
        _need(tool)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise BuildError(f"{tool} not found; apt-get install debootstrap e2fsprogs (see .ci/run)")


_STARTED = time.monotonic()


def _step(what: str) -> None:
    print(f"image: [{time.monotonic() - _STARTED:4.0f} s] {what}", flush=True)


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{argv[0]} failed with status {exc.returncode}") from exc


def _chroot(root: Path, script: str) -> None:
    """Run ``script`` in ``root`` with a clean environment."""
    _run(
        [
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
            "chroot",
            str(root),
            "/bin/sh",
            "-euc",
            script,
        ]
    )


@contextlib.contextmanager
def _mounted(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside ``root`` for as long as the chroot needs them."""
    done: list[Path] = []
    try:
        for args, target in (
            (["-t", "proc", "proc"], "proc"),
            (["-t", "sysfs", "sysfs"], "sys"),
            (["--bind", "/dev"], "dev"),
            (["-t", "devpts", "devpts"], "dev/pts"),
        ):
            path = root / target
            path.mkdir(parents=True, exist_ok=True)
            _run(["mount", *args, str(path)])
            done.append(path)
        yield
    finally:
        for path in reversed(done):
            subprocess.run(["umount", "-l", str(path)], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        for mount in ("dev/pts", "dev", "sys", "proc"):
            if os.path.ismount(path / mount):
                raise BuildError(f"{path / mount} is still mounted; not removing {path}")
        shutil.rmtree(path)


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise BuildError(f"expected one {pattern} in {directory}, found {len(found)}")
    return found[0]


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _digest_files(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(CHECKOUT)).encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0" + oct(path.stat().st_mode & 0o111).encode() + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
