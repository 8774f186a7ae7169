#!/bin/sh
# Assembles the agent image's root filesystem in DEST from the agent binary
# BINARY and this (Debian) machine's `nft`: exactly the files the agent needs
# at run time, for an image built FROM scratch. Both builders use it:
# deploy/build-image.sh (buildah, on this machine) and the root Dockerfile
# (in its Debian build stage), so both images have this layout:
#
#   /usr/local/bin/edgemesh        the agent (the image's entrypoint)
#   /usr/sbin/nft                  nftables' command-line tool, for node mode
#   /lib/x86_64-linux-gnu/*.so.*   the shared libraries of both, as ldd finds
#   /lib64/ld-linux-x86-64.so.2    them here, and the dynamic loader
#   /usr/share/doc/<package>/copyright   the licence of every Debian package
#                                  a file was taken from (nftables is GPL-2)
#   /etc/edgemesh/                 mount point of the config (ConfigMap)
#   /var/lib/edgemesh/             the state directory (a volume in practice),
#                                  owned by the image's default user 65532
#
# Nothing else: no shell, no /etc/passwd (users are numeric), no CA
# certificates (the shipped deployments read metaServer over plain HTTP or
# the API with the service account's CA; a kubeconfig that names no CA for
# a publicly signed server needs /etc/ssl/certs mounted in), no nsswitch.conf
# (the agent resolves no names through libc; resolv.conf is the node's,
# mounted by the runtime). Libraries a program opens with dlopen are not
# found by ldd: neither program needs one (glibc >= 2.34 has NSS files and
# dns built in, and nft loads no xtables extension for the agent's rules).
#
# Usage: deploy/image/rootfs.sh BINARY DEST   (DEST must not exist or be empty)
# Environment: NFT, the nft to copy (default: the one on PATH).
set -eu

usage() {
	echo "usage: $0 BINARY DEST" >&2
	exit 2
}
[ $# -eq 2 ] || usage
binary=$1
dest=$2
fail() {
	echo "rootfs.sh: $*" >&2
	exit 1
}

[ -f "$binary" ] && [ -x "$binary" ] || fail "the agent binary $binary is not an executable file"
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
	fail "$dest is not empty: give a new or empty directory"
fi
nft=${NFT:-$(command -v nft || true)}
[ -n "$nft" ] || nft=/usr/sbin/nft
[ -x "$nft" ] || fail "no nft at ${nft}: install nftables (apt-get install nftables) or set NFT"
command -v ldd >/dev/null || fail "ldd is missing (Debian: libc-bin)"

mkdir -p "$dest"
install -D -m 0755 "$binary" "$dest/usr/local/bin/edgemesh"
install -D -m 0755 "$nft" "$dest/usr/sbin/nft"

# The shared libraries (and the loader) of both programs, at the paths ldd
# names, so that the loader's default search finds them without an
# ld.so.cache. Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6
# (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
libraries() {
	out=$(ldd "$1" 2>&1) || {
		case $out in
		*"not a dynamic executable"* | *"statically linked"*) return 0 ;;
		*) fail "ldd $1: $out" ;;
		esac
	}
	printf '%s\n' "$out" | grep -q 'not found' && fail "ldd $1: a library is missing here: $out"
	printf '%s\n' "$out" | sed -n -e 's/^.*=> \(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p'
}
# (One program per substitution: a failure inside one stops the script.)
agent_libraries=$(libraries "$binary")
nft_libraries=$(libraries "$nft")
files=$(printf '%s\n%s\n' "$agent_libraries" "$nft_libraries" | sed '/^$/d' | sort -u)
[ -n "$files" ] || fail "ldd found no libraries for $binary and $nft (not glibc programs?)"
for file in $files; do
	# -L: the library itself, under the name programs ask for (its soname).
	mkdir -p "$dest$(dirname "$file")"
	cp -L "$file" "$dest$file"
	chmod 0755 "$dest$file"
done

# The licence of each Debian package a file came from, when dpkg knows it.
if command -v dpkg-query >/dev/null; then
	for file in "$nft" $files; do
		pkg=$(dpkg-query -S "$file" 2>/dev/null || dpkg-query -S "$(readlink -f "$file")" 2>/dev/null || true)
		pkg=${pkg%%:*}
		copyright=/usr/share/doc/$pkg/copyright
		if [ -n "$pkg" ] && [ -f "$copyright" ]; then
			install -D -m 0644 "$copyright" "$dest$copyright"
		fi
	done
fi

install -d -m 0755 "$dest/etc/edgemesh"
install -d -m 0750 "$dest/var/lib/edgemesh"
# Numeric, as there is no /etc/passwd; chown needs root (buildah and the
# Dockerfile run this as root).
if [ "$(id -u)" = 0 ]; then
	chown 65532:65532 "$dest/var/lib/edgemesh"
fi

# Both programs start inside the new root (as root only: chroot).
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
	chroot "$dest" /usr/sbin/nft --version >/dev/null || fail "nft does not start inside $dest"
	chroot "$dest" /usr/local/bin/edgemesh --version >/dev/null || fail "edgemesh does not start inside $dest"
fi
