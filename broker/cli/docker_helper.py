"""Is ``docker-credential-broker`` where docker and skopeo will look for it?

A docker config's ``credHelpers`` names a helper by its suffix; the client runs
``docker-credential-SUFFIX`` found on PATH with Go's ``exec.LookPath``, which also
refuses a match in a relative PATH entry ("resolves to executable in current
directory"). ``broker login docker`` checks the same way before writing anything,
rather than leave a config every pull then fails on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from broker.errors import FailedPrecondition, InvalidArgument

HELPER = "docker-credential-broker"


def look_path(name: str, path: str | None = None) -> tuple[Path | None, str]:
    """Go's ``exec.LookPath``: the first executable ``name`` on PATH, and why not if none
    (a match in a relative entry, "" included, is refused as Go 1.19+ does)."""
    entries = (os.environ.get("PATH", "") if path is None else path).split(os.pathsep)
    for entry in entries:
        candidate = Path(entry or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if not candidate.is_absolute():
                return None, f"it resolves to {candidate}, in a relative PATH entry ('{entry}'), "
            return candidate, ""
    return None, "it is not on PATH, "


def _advice(ours: str) -> str:
    bindir = Path(ours).parent
    return (
        f"put {bindir} on PATH (`. {bindir}/activate` in a venv, or "
        f'`export PATH="{bindir}:$PATH"`), or link it into a directory on PATH: '
        "`broker login docker NAME --install-helper ~/.local/bin`"
    )


def check_on_path(ours: str, installed: Path | None = None) -> Path:
    """The helper docker will run; refused (nothing written) when it would find none."""
    found, why = look_path(HELPER)
    if found is None and installed is not None:
        raise FailedPrecondition(
            f"linked {installed}, but {installed.parent} is not on PATH, where docker and "
            f"skopeo look for {HELPER}; add it to PATH and run this again"
        )
    if found is None:
        raise FailedPrecondition(
            f"docker and skopeo run the credential helper {HELPER} from PATH, and {why}"
            f"so nothing was written; {_advice(ours)}"
        )
    return found


def install(directory: Path, ours: str) -> Path:
    """Link ``DIR/docker-credential-broker`` to this installation's helper (DIR on PATH)."""
    directory = directory.expanduser()
    if not directory.is_absolute():
        raise InvalidArgument(
            f"--install-helper {directory}: give an absolute directory (docker refuses "
            "helpers found through relative PATH entries)",
            field="install_helper",
        )
    if not Path(ours).is_file():
        raise FailedPrecondition(f"{HELPER} is not installed next to this broker ({ours})")
    link = directory / HELPER
    if link.exists() and not link.is_symlink():
        raise FailedPrecondition(
            f"{link} exists and is not a link made by broker: remove it or choose another "
            "directory",
        )
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{HELPER}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(ours)
    tmp.replace(link)
    print(f"linked {link} -> {ours}", file=sys.stderr)
    return link
