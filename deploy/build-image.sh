#!/bin/sh
# Builds the agent image on this machine with buildah, FROM scratch: the root
# filesystem comes from deploy/image/rootfs.sh (the agent, nft and exactly
# their shared libraries), the same layout the root Dockerfile builds.
#
#   deploy/build-image.sh                  # cargo build --release -p edgemesh, then the image
#   deploy/build-image.sh path/to/edgemesh # an agent binary built already
#   deploy/build-image.sh --tag localhost/edgemesh:dev path/to/edgemesh
#
# The image is committed to the local container storage as
# localhost/edgemesh:<version of Cargo.toml> (or --tag); it prints the name
# and the size. Needs root (it mounts the container's root) and Debian's buildah
# and nftables. Run it with podman (see deploy/README.md), or push it to the
# registry the nodes pull from:
#   podman push localhost/edgemesh:0.1.0 <registry>/edgemesh:0.1.0
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
fail() {
	echo "build-image.sh: $*" >&2
	exit 1
}

tag=
binary=
while [ $# -gt 0 ]; do
	case $1 in
	--tag) [ $# -ge 2 ] || fail "--tag needs a name"; tag=$2; shift 2 ;;
	--tag=*) tag=${1#--tag=}; shift ;;
	-h | --help) sed -n '2,15p' "$0"; exit 0 ;;
	-*) fail "unknown option $1" ;;
	*) [ -z "$binary" ] || fail "one binary only"; binary=$1; shift ;;
	esac
done
command -v buildah >/dev/null || fail "buildah is missing (apt-get install buildah)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
[ -n "$version" ] || fail "no version in $repo/Cargo.toml"
[ -n "$tag" ] || tag=localhost/edgemesh:$version
if [ -z "$binary" ]; then
	(cd "$repo" && cargo build --release --locked -p edgemesh)
	binary=${CARGO_TARGET_DIR:-$repo/target}/release/edgemesh
fi

container=
cleanup() {
	[ -z "$container" ] || buildah rm "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 1' INT TERM

container=$(buildah from scratch)
# The root filesystem is assembled straight into the container's (empty)
# root: modes and owners as rootfs.sh sets them (buildah copy would make
# everything root's).
"$repo/deploy/image/rootfs.sh" "$binary" "$(buildah mount "$container")"
buildah umount "$container" >/dev/null
buildah config \
	--entrypoint '["/usr/local/bin/edgemesh"]' \
	--cmd agent \
	--env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
	--user 65532:65532 \
	--port 15020/tcp \
	--label org.opencontainers.image.title=edgemesh \
	--label org.opencontainers.image.version="$version" \
	--label org.opencontainers.image.licenses="Apache-2.0" \
	--label org.opencontainers.image.description="edgemesh agent; with nftables' nft (GPL-2.0, a separate program: /usr/share/doc/nftables/copyright)" \
	"$container"
buildah commit --quiet --rm "$container" "$tag" >/dev/null
container=

buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag"
