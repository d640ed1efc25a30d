# CI only, sourced by .ci/run: what tests/test_image.py needs on a machine with no Docker engine, no
# Docker Hub and a TLS-intercepting proxy. It changes this machine's system configuration, which the
# user-facing commands (`make image`) never do. Exports BACKEND, BASE_IMAGE and CONTAINERIZE_OPTS,
# which `make image` reads. Safe to run again: each step skips what is already done.

ci_base_image=localhost/imgserve-ci-base:bookworm  # Debian 12: Python 3.11, as bentofile.yaml asks
ci_ca_bundle=/etc/ssl/certs/ca-certificates.crt    # Debian's system CA bundle, the proxy's CA in it

ci_log() { echo "setup-containers: $*" >&2; }

# 1. podman (builds and runs), skopeo (reads a registry), debootstrap (base image), docker-registry.
ci_missing=""
for tool in podman buildah skopeo runc debootstrap docker-registry; do
    command -v "$tool" >/dev/null || ci_missing="$ci_missing $tool"
done
if [ -n "$ci_missing" ]; then
    ci_log "installing podman buildah skopeo runc debootstrap docker-registry (missing:$ci_missing)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah skopeo runc debootstrap docker-registry >/dev/null
fi

# 2. This host's quirks: podman's default runtime refuses its cgroup setup, and podman's default
#    open-file limit is above the hard limit here.
mkdir -p /etc/containers/containers.conf.d
cat >/etc/containers/containers.conf.d/50-imgserve-ci.conf <<'EOF'
# Written by imgserve's .ci/setup-containers.sh (CI only).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]

[engine]
runtime = "runc"
EOF

# 3. A Debian 12 base image made here, since Docker Hub cannot be pulled from: minbase plus Python 3.11,
#    pip (BentoML's Dockerfile runs `pip install uv`) and passwd (it runs groupadd/useradd).
if ! podman image exists "$ci_base_image"; then
    ci_mirror=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        ci_mirror=$(mawk -v RS= '$0 ~ /(^|\n)Suites:([^\n]* )?bookworm( |\n|$)/ {
            if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit }
        }' "$f")
        [ -n "$ci_mirror" ] && break
    done
    if [ -z "$ci_mirror" ] && [ -f /etc/apt/sources.list ]; then
        ci_mirror=$(mawk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
    fi
    if [ -z "$ci_mirror" ]; then
        ci_log "no Debian bookworm mirror in this machine's apt sources"
        return 1
    fi
    ci_root=$(mktemp -d)
    ci_log "debootstrap bookworm (minbase + python3) from this machine's apt mirror"
    debootstrap --variant=minbase --include=python3-minimal,python3-venv,python3-pip,passwd,ca-certificates \
        bookworm "$ci_root" "$ci_mirror" >/dev/null
    # This machine's apt date checks, for BentoML's `apt-get update` in the build (a mirror may serve a
    # dated snapshot).
    apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' >"$ci_root/etc/apt/apt.conf.d/99imgserve-ci" || true
    rm -rf "$ci_root"/var/cache/apt/archives/*.deb "$ci_root"/var/lib/apt/lists/*
    # UV_NATIVE_TLS: uv trusts the system CA bundle, which the build mounts from this machine.
    # PIP_BREAK_SYSTEM_PACKAGES: Debian's pip refuses system-wide installs (PEP 668) without it.
    ci_changes=(--change "ENV UV_NATIVE_TLS=1" --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1"
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    # The package index this machine's pip uses, if it is not PyPI's default, passed through as is for
    # the build's `pip install uv`. (uv's index reaches the build through the Bento: `bentoml build`
    # locks the requirements with this machine's uv settings and writes the index into them.)
    ci_index=$(pip config get global.index-url 2>/dev/null || true)
    ci_index=${PIP_INDEX_URL:-$ci_index}
    case "$ci_index" in
        http://* | https://*) ci_changes+=(--change "ENV PIP_INDEX_URL=$ci_index") ;;
    esac
    tar -C "$ci_root" -c . | podman import --quiet "${ci_changes[@]}" - "$ci_base_image" >/dev/null
    rm -rf "$ci_root"
    ci_log "made $ci_base_image"
fi

# What `make image` (run by tests/test_image.py) reads: podman, the local base image, and the host's CA
# bundle mounted read-only at the same place inside the build so HTTPS passes the proxy.
export BACKEND=podman
export BASE_IMAGE="$ci_base_image"
export CONTAINERIZE_OPTS="--opt volume=$ci_ca_bundle:$ci_ca_bundle:ro"
