"""Build the project's Dockerfile, unchanged, without a Docker engine: buildah, podman, mmdebstrap.

No image registry is reachable here, so the Dockerfile's base (``PYTHON_IMAGE``,
``python:3.11-slim-bookworm``) is replaced by a **stand-in** when it is missing: a Debian
bookworm root file system made by ``mmdebstrap`` with Debian's ``python3`` (3.11.2, not the
latest 3.11 that the official image builds into ``/usr/local``), ``python3-venv``,
``python3-pip`` and ``ca-certificates``; ``/usr/local/bin/python{,3}`` and ``pip{,3}`` link
to it, there is no ``EXTERNALLY-MANAGED`` marker, and ``PATH``, ``LANG`` and ``CMD`` are the
official image's. ``podman import`` tags it under the official name, so ``--pull=never``
finds it, with a label that says what it is (inherited by every image built on it). Its
tarball is cached in ``~/.cache/hoopai-relay/image/``, keyed by the recipe.

``buildah bud --pull=never --isolation chroot --layers`` builds without a daemon. Without
``--layers`` buildah squashes the final stage into one layer. The machine's CA bundle is
mounted into the RUN steps only (pip may need it to reach the package index through the
machine's own setup); it is never written into the image.

``podman run`` here needs a ``containers.conf`` (:func:`write_containers_conf`): the ``runc``
runtime (``crun`` refuses a hybrid cgroup layout) and ``nofile``/``nproc`` limits within
the host's hard limits (podman's defaults exceed them in a container host).

Standard library only, like ``localkafka``; the image test (``tests/test_image.py``)
imports it. Command line::

    python3 dev/image.py build [--tag hoopai-relay:dev]   # `make image`
    python3 dev/image.py containers-conf                  # writes one, prints its path
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from localkafka import cache_root

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("buildah", "podman", "mmdebstrap", "runc")  # also their Debian package names
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STANDIN_LABEL = "hoopai-relay.base"
# One word: podman import's --change cuts at the first space.
STANDIN_LABEL_VALUE = "stand-in:debian-bookworm-python3:mmdebstrap:not-the-official-image"
# What the official python:3.11-slim-bookworm image sets, so the Dockerfile sees the same.
STANDIN_CHANGES = (
    "ENV=PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV=LANG=C.UTF-8",
    'CMD=["python3"]',
    f"LABEL={STANDIN_LABEL}={STANDIN_LABEL_VALUE}",
)
# The official image's /usr/local/bin names, here links to Debian's interpreter and pip.
STANDIN_LINKS = {"python": "python3", "python3": "python3", "pip": "pip3", "pip3": "pip3"}
# Like debian:bookworm-slim: no manuals, docs (but the copyrights) or translations.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
BUILD_TIMEOUT_S = 1200
STANDIN_TIMEOUT_S = 1200


def missing_tools() -> list[str]:
    """The programs of :data:`TOOLS` not on ``PATH``."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def base_image() -> str:
    """The Dockerfile's default ``PYTHON_IMAGE``, the image both of its stages start from."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("Dockerfile: no ARG PYTHON_IMAGE=")


def standin_command(output: Path) -> list[str]:
    """The ``mmdebstrap`` argv that writes the stand-in root file system to ``output``.

    The mirror is the host's apt sources (mmdebstrap's default with no mirror given), so
    the machine's own package setup is used and no host is named here.
    """
    links = " && ".join(
        f'ln -sf /usr/bin/{target} "$1/usr/local/bin/{name}"'
        for name, target in STANDIN_LINKS.items()
    )
    return [
        "mmdebstrap",
        "--variant=apt",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        # A merged /usr without the usrmerge package, which would pull in perl.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS),
        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        f"--customize-hook={links}",
        "bookworm",
        str(output),
    ]


def standin_tarball() -> Path:
    """The stand-in root file system's tarball, made once and cached, keyed by its recipe."""
    recipe = "\n".join(standin_command(Path("-"))).encode()
    folder = cache_root() / "image"
    tarball = folder / f"python-3.11-bookworm-standin-{hashlib.sha256(recipe).hexdigest()[:12]}.tar"
    if tarball.exists():
        return tarball
    folder.mkdir(parents=True, exist_ok=True)
    # Two runs may make it at once: each writes its own partial file, and the first to
    # finish renames it in place (a rename replaces the other's identical result atomically).
    partial = tarball.with_name(f"{tarball.stem}.{os.getpid()}.partial.tar")
    began = time.monotonic()
    print(f"image: making the stand-in base with mmdebstrap into {tarball}", file=sys.stderr)
    subprocess.run(standin_command(partial), check=True, timeout=STANDIN_TIMEOUT_S)
    partial.rename(tarball)  # only a complete tarball is ever found under the final name
    print(f"image: stand-in made in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return tarball


def image_exists(name: str, env: Mapping[str, str]) -> bool:
    """Whether podman's storage (as ``env`` configures it) holds ``name``."""
    found = subprocess.run(
        ["podman", "image", "exists", name], env=env, check=False, timeout=60
    )  # fmt: skip
    return found.returncode == 0


def ensure_base(env: Mapping[str, str]) -> bool:
    """Import the stand-in under the Dockerfile's base name unless an image has that name.

    True when it imported. An official image already there is used as it is.
    """
    name = base_image()
    if image_exists(name, env):
        return False
    changes = [arg for change in STANDIN_CHANGES for arg in ("--change", change)]
    subprocess.run(
        ["podman", "import", "--quiet", *changes, str(standin_tarball()), name],
        env=env,
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    return True


def build_command(tag: str, context: Path = ROOT) -> list[str]:
    """The ``buildah bud`` argv that builds the Dockerfile in ``context`` as ``tag``."""
    command = ["buildah", "bud", "--pull=never", "--isolation", "chroot", "--layers"]
    if HOST_CA_BUNDLE.exists():
        # A bind mount for RUN steps only: the image keeps its own ca-certificates.
        command += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    return [*command, "--tag", tag, str(context)]


def build(tag: str, env: Mapping[str, str], context: Path = ROOT) -> float:
    """Build ``tag`` (the base imported first if missing); the build's seconds."""
    ensure_base(env)
    began = time.monotonic()
    subprocess.run(build_command(tag, context), env=env, check=True, timeout=BUILD_TIMEOUT_S)
    return time.monotonic() - began


def _within_hard_limit(limit: int, wanted: int) -> int:
    """``wanted``, or the hard limit when that is lower (an infinite one is no bound)."""
    hard = resource.getrlimit(limit)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)


def containers_conf_text(tmp_dir: Path | None = None) -> str:
    """A ``containers.conf`` for ``podman run`` on this kind of host (see the module doc).

    ``tmp_dir`` is podman's state that must not outlive a boot (exit codes, events, locks),
    given for a private storage so that it shares nothing with the machine's podman.
    """
    nofile = _within_hard_limit(resource.RLIMIT_NOFILE, 65536)
    nproc = _within_hard_limit(resource.RLIMIT_NPROC, 4096)
    engine = f'tmp_dir = "{tmp_dir}"\n' if tmp_dir else ""
    return (
        "# Written by dev/image.py for podman on a container host.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "\n[engine]\n"
        '# crun refuses a hybrid cgroup layout; runc runs there.\nruntime = "runc"\n'
        f"{engine}"
    )


def write_containers_conf(path: Path, tmp_dir: Path | None = None) -> Path:
    """Write :func:`containers_conf_text` to ``path``; ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(containers_conf_text(tmp_dir))
    return path


def private_storage_env(folder: Path, run_folder: Path) -> dict[str, str]:
    """The environment for podman and buildah with their storage and config in ``folder``.

    Images, layers and containers then live in ``folder``, and the per-boot state in
    ``run_folder``; nothing is changed in the machine's default storage. Keep
    ``run_folder`` short (``/tmp/<name>``): conmon's sockets under it must fit a Unix socket
    path, and with a long one (pytest's ``tmp_path``) every ``podman run`` here waited 20 s
    for its exit code.
    """
    storage_conf = folder / "storage.conf"
    folder.mkdir(parents=True, exist_ok=True)
    storage_conf.write_text(
        "[storage]\n"
        # podman insists on a named driver (it records it at the first use); overlay is
        # Debian's default.
        'driver = "overlay"\n'
        f'graphroot = "{folder / "graph"}"\n'
        f'runroot = "{run_folder / "storage"}"\n'
    )  # fmt: skip
    conf = write_containers_conf(folder / "containers.conf", tmp_dir=run_folder / "libpod")
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_CONF": str(conf),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python3 dev/image.py {build,containers-conf}``."""
    parser = argparse.ArgumentParser(prog="image", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "containers-conf"])
    parser.add_argument("--tag", default="hoopai-relay:dev", help="default hoopai-relay:dev")
    args = parser.parse_args(argv)
    if args.action == "containers-conf":
        print(write_containers_conf(cache_root() / "image" / "containers.conf"))
        return 0
    if missing := missing_tools():
        print(f"image: missing {' '.join(missing)}: `make image-tools` (as root)", file=sys.stderr)
        return 1
    try:
        seconds = build(args.tag, os.environ)
    except subprocess.CalledProcessError as exc:
        print(f"image: {exc.cmd[0]} failed with status {exc.returncode}", file=sys.stderr)
        return 1
    print(f"image: built {args.tag} in {seconds:.0f} s (base: {base_image()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
