"""An offline stand-in for ``python:3.11-slim``, made from this machine's own files.

No base image can be pulled here, so the container test builds one: the
running CPython (interpreter, libpython, the standard library and pip),
``/bin/sh`` and the few coreutils the Dockerfile's RUN steps call, each with
the shared libraries ``ldd`` says it loads, the CA bundle, and an ``/etc``
with root and nobody. The layout is the official image's (``/usr/local/bin/
python3.11``, ``/usr/local/lib``, a merged ``/usr``), so the real Dockerfile
builds FROM it unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: Commands the Dockerfile's RUN steps use (the official image has all of Debian's).
TOOLS = ("dash", "mkdir", "cp", "install", "chown", "chmod", "cat", "ls", "rm", "ln", "id", "env")
#: Debian packages whose libraries manylinux wheels may load (grpcio wants librt, ...):
#: the official image has them all, so the stand-in carries them whole.
LIBRARY_PACKAGES = ("libc6", "libgcc-s1", "libstdc++6", "zlib1g")
#: Parts of the standard library a daemon never imports (and the static libpython).
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "site-packages", "config-3.*")
ETC_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"
ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
_LDD_PATH = re.compile(r"(/\S+) \(0x")


def shared_libraries(binary: Path) -> set[Path]:
    """What the dynamic loader maps for ``binary`` (the loader itself included)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    return {Path(m) for m in _LDD_PATH.findall(out)}


def package_libraries(packages: tuple[str, ...]) -> list[Path]:
    """The shared objects the given installed Debian packages ship."""
    listed = subprocess.run(
        ["dpkg", "-L", *packages], capture_output=True, text=True, check=True
    ).stdout.split()
    return [Path(p) for p in listed if ".so" in Path(p).name and Path(p).is_file()]


def _place(root: Path, source: Path) -> None:
    """Copy ``source`` to the same path under ``root``, keeping a symlinked name as a link."""
    real = source.resolve()
    target = root / str(real).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(real, target)
    name = root / os.path.realpath(source.parent).lstrip("/") / source.name
    if name != target and not name.exists():
        name.parent.mkdir(parents=True, exist_ok=True)
        name.symlink_to(os.path.relpath(target, name.parent))


def build_rootfs(root: Path) -> Path:
    """Fill ``root`` with the stand-in's files; returns it."""
    for top in ("bin", "lib", "lib64", "sbin"):  # Debian 12 merges /usr
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        (root / top).symlink_to(f"usr/{top}")
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    local = root / "usr/local"
    (local / "bin").mkdir(parents=True)
    (local / "lib").mkdir()
    interpreter = prefix / "bin" / version
    shutil.copy2(interpreter, local / "bin" / version)
    for alias in ("python3", "python"):
        (local / "bin" / alias).symlink_to(version)
    elves = [interpreter]
    libdir = Path(sysconfig.get_config_var("LIBDIR") or prefix / "lib")
    for lib in libdir.glob("libpython3*.so*"):
        shutil.copy2(lib, local / "lib" / lib.name, follow_symlinks=False)
    shutil.copytree(
        prefix / "lib" / version,
        local / "lib" / version,
        ignore=shutil.ignore_patterns(*STDLIB_SKIP, "_tkinter*"),
        symlinks=True,
    )
    site = prefix / "lib" / version / "site-packages"
    for item in [*site.glob("pip"), *site.glob("pip-*.dist-info")]:
        shutil.copytree(item, local / "lib" / version / "site-packages" / item.name)
    elves += (local / "lib" / version / "lib-dynload").glob("*.so")
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is not on this machine"
        _place(root, Path(found))
        elves.append(Path(found))
    (root / "usr/bin/sh").symlink_to("dash")
    _place(root, Path("/usr/sbin/nologin"))
    libraries = set(package_libraries(LIBRARY_PACKAGES))
    for elf in elves:
        libraries |= shared_libraries(elf)
    for lib in sorted(libraries):
        if not str(lib).startswith(str(prefix)):
            _place(root, lib)
    etc = root / "etc"
    (etc / "ssl/certs").mkdir(parents=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", etc / "ssl/certs/ca-certificates.crt")
    (etc / "passwd").write_text(ETC_PASSWD)
    (etc / "group").write_text(ETC_GROUP)
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    (etc / "ld.so.conf").write_text(f"/usr/local/lib\n/usr/lib/{multiarch}\n/usr/lib\n")
    subprocess.run(["ldconfig", "-r", str(root)], check=True)
    for path, mode in (("tmp", 0o1777), ("root", 0o700), ("run", 0o755), ("var/lib", 0o755)):
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path).chmod(mode)
    return root
