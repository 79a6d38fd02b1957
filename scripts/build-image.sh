#!/usr/bin/env bash
# Build the worker image (templates/Dockerfile) with buildah, with no daemon, and check it by
# running `batchexec worker --self-check` inside it. What CI runs (tests/test_image.py).
#
#   bash scripts/build-image.sh [--offline-base] [--python X.Y] [--tag NAME] [--archive FILE]
#                               [--keep] [--workdir DIR] [--with-docker]
#
# --offline-base  build FROM a Debian bookworm root made here with mmdebstrap from the
#                 distribution's archive (for machines that reach no image registry), instead
#                 of the Dockerfile's default BASE (python:X.Y-slim-bookworm from Docker Hub).
# --python X.Y    the client's Python minor version (default: that of .venv/bin/python, else
#                 python3): the image must run the same one.
# --archive FILE  also write the image as a docker-archive tarball (`docker load -i FILE`,
#                 `podman load -i FILE`, or push it with `skopeo copy docker-archive:FILE
#                 docker://...`); tests/test_containers.py runs it from there.
# --with-docker   also install docker.io (dockerd), which `batchexec local --containers` and
#                 tests/test_containers.py use to run the image (CI passes it).
# --keep          keep buildah's storage (and the image in it) under the work directory;
#                 by default it is removed at the end (vfs keeps a full copy per layer).
# --workdir DIR   where storage and caches go (default ${XDG_CACHE_HOME:-~/.cache}/batchexec/image).
#
# Storage is buildah's vfs driver with chroot isolation: no daemon, no overlay or fuse, no
# user namespaces, so it runs in containers and sandboxes. The build uses the host's network
# and, when the host reaches PyPI through its own pip configuration (a mirror, a private CA),
# that configuration: the effective `pip config list`, PIP_* variables and the CA bundle are
# written to one pip.conf that is mounted into the build (never into the image), along with
# any local directories it points at (file:// indexes, find-links).
#
# Cached between runs (safe: keyed by everything that goes into them): the mmdebstrap base
# tarball, per suite and package list, for 7 days. Nothing else is cached.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

offline_base=0
python_version=""
tag="localhost/batchexec-worker:dev"
archive=""
keep=0
with_docker=0
workdir="${XDG_CACHE_HOME:-$HOME/.cache}/batchexec/image"
while [ $# -gt 0 ]; do
  case "$1" in
    --offline-base) offline_base=1 ;;
    --python) python_version="$2"; shift ;;
    --tag) tag="$2"; shift ;;
    --archive) archive="$2"; shift ;;
    --keep) keep=1 ;;
    --workdir) workdir="$2"; shift ;;
    --with-docker) with_docker=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
for pkg in buildah; do dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); done
if [ "$with_docker" -eq 1 ]; then
  for pkg in docker.io; do dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); done
fi
if [ "$offline_base" -eq 1 ]; then
  for pkg in mmdebstrap; do dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "build-image: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

client_python="${PYTHON:-}"
[ -n "$client_python" ] || { [ -x .venv/bin/python ] && client_python=.venv/bin/python; } || true
[ -n "$client_python" ] || client_python=python3
if [ -z "$python_version" ]; then
  python_version=$("$client_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
fi
[[ "$python_version" =~ ^[0-9]+\.[0-9]+$ ]] || {
  echo "build-image: --python wants MAJOR.MINOR, not '$python_version'" >&2; exit 2; }

mkdir -p "$workdir"
storage="$workdir/storage"
run="$(mktemp -d "${TMPDIR:-/tmp}/batchexec-build.XXXXXX")"
bh=(buildah --root "$storage" --runroot "$run/runroot" --storage-driver vfs)
cleanup() {
  local rc=$?
  "${bh[@]}" rm --all >/dev/null 2>&1 || true
  if [ "$keep" -eq 0 ]; then
    "${bh[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$storage"
  fi
  rm -rf "$run"
  exit "$rc"
}
trap cleanup EXIT
t0=$(date +%s)
stamp() { echo "build-image: [$(( $(date +%s) - t0 )) s] $*"; }

# -- the base ---------------------------------------------------------------------------------
build_args=(--build-arg "PYTHON_VERSION=$python_version")
if [ "$offline_base" -eq 1 ]; then
  suite=bookworm
  mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  packages="python3,python3-venv,python3-dev,ca-certificates"
  key=$(printf '%s %s %s' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-12)
  tarball="$workdir/base-$suite-$key.tar"
  if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -7)" ]; then
    stamp "reusing $tarball (less than 7 days old)"
  else
    stamp "making a Debian $suite root with mmdebstrap ($packages)"
    mmdebstrap --variant=minbase --format=tar --include="$packages" --quiet \
      "$suite" "$tarball.part" "deb $mirror $suite main" "deb $mirror $suite-updates main"
    mv "$tarball.part" "$tarball"
  fi
  base_python=$(tar -tf "$tarball" | grep -oE '^\./usr/bin/python3\.[0-9]+$' | head -1 || true)
  if [ "${base_python##*/}" != "python$python_version" ]; then
    echo "build-image: the offline base (Debian $suite) has ${base_python##*/}, the client" \
         "runs Python $python_version: use a client on ${base_python##*/}, or build without" \
         "--offline-base (python:$python_version-slim-bookworm from Docker Hub)" >&2
    exit 1
  fi
  ctr=$("${bh[@]}" from scratch)
  "${bh[@]}" add "$ctr" "$tarball" / >/dev/null
  "${bh[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  "${bh[@]}" commit --quiet --rm "$ctr" localhost/batchexec-base:"$suite" >/dev/null
  build_args+=(--build-arg "BASE=localhost/batchexec-base:$suite")
  stamp "base image localhost/batchexec-base:$suite ready"
fi

# -- the build host's pip configuration, for the build only -----------------------------------
mkdir -p "$run/pip"
mounts=()
"$client_python" - "$run/pip" > "$run/pip/mounts" <<'PY'
"""Write <dir>/pip.conf from the effective pip configuration; print local dirs to mount."""
import os, re, shutil, subprocess, sys
out = sys.argv[1]
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True).stdout
settings = {}
for line in listing.splitlines():
    m = re.match(r"^[a-z_-]+\.([a-z0-9_-]+)='(.*)'$", line)
    if m:
        settings[m.group(1)] = m.group(2).replace("\\n", " ")
for name, value in os.environ.items():
    if name.startswith("PIP_") and name not in ("PIP_CONFIG_FILE",):
        settings[name[4:].lower().replace("_", "-")] = value
ca = (settings.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE")
      or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
if os.path.isfile(ca):
    shutil.copyfile(ca, os.path.join(out, "ca.pem"))
    settings["cert"] = "/run/batchexec-build/pip/ca.pem"
else:
    settings.pop("cert", None)
for key in ("config-file", "require-virtualenv", "user", "target", "prefix", "root"):
    settings.pop(key, None)
dirs = set()
for key in ("index-url", "extra-index-url", "find-links"):
    for item in settings.get(key, "").split():
        path = item[len("file://"):] if item.startswith("file://") else item
        if path.startswith("/") and os.path.exists(path):
            path = path.rstrip("/") if os.path.isdir(path) else os.path.dirname(path)
            # A local index's pages link to files beside it (simple/ and files/ in one root).
            dirs.add(os.path.dirname(path) if key != "find-links" else path)
with open(os.path.join(out, "pip.conf"), "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
for d in sorted(dirs):
    print(d)
PY
while IFS= read -r dir; do
  [ -n "$dir" ] && mounts+=(--volume "$dir:$dir:ro")
done < "$run/pip/mounts"
mounts+=(--volume "$run/pip:/run/batchexec-build/pip:ro")
build_args+=(--build-arg "PIP_CONFIG_FILE=/run/batchexec-build/pip/pip.conf")

# -- build ------------------------------------------------------------------------------------
stamp "building $tag (Python $python_version) from templates/Dockerfile"
"${bh[@]}" build --isolation chroot --network host --platform linux/amd64 --pull=false \
  "${build_args[@]}" "${mounts[@]}" \
  -f templates/Dockerfile -t "$tag" "$root"
stamp "built $tag"

# -- check it as it will run ------------------------------------------------------------------
ctr=$("${bh[@]}" from --pull=false "$tag")
"${bh[@]}" run --isolation chroot "$ctr" -- \
  batchexec worker --self-check --python "$python_version"
"${bh[@]}" rm "$ctr" >/dev/null
size=$("${bh[@]}" images --format '{{.Size}}' "$tag" | head -1)
stamp "self-check passed; image $tag is $size"

if [ -n "$archive" ]; then
  rm -f "$archive"
  "${bh[@]}" push --quiet "$tag" "docker-archive:$archive:$tag"
  stamp "wrote $archive"
fi
if [ "$keep" -eq 1 ]; then
  echo "build-image: kept; list it with: buildah --root $storage --storage-driver vfs images"
fi
