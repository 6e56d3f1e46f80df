#!/usr/bin/env bash
# Build the keel kernel from Debian's linux-source: tinyconfig + kernel-config/keel.config.
# The result is cached, keyed by the hash of the fragment and of the source tarball, so a
# machine builds it once. Prints the path of the bzImage on stdout (last line).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
frag="$top/kernel-config/keel.config"
cache=${KEEL_CACHE:-/var/cache/keel}

tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$tarball" ]; then
  echo "build-kernel: no /usr/src/linux-source-*.tar.xz; install the linux-source package" >&2
  exit 1
fi
key=$(cat "$frag" "$0" | sha256sum | cut -c1-16)-$(basename "$tarball" .tar.xz)
out="$cache/kernel-$key"
if [ -f "$out/bzImage" ]; then
  echo "build-kernel: cached $out/bzImage" >&2
  echo "$out/bzImage"
  exit 0
fi

work="$cache/build-$key"
rm -rf "$work"
mkdir -p "$work"
echo "build-kernel: unpacking $tarball" >&2
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"
echo "build-kernel: configuring (tinyconfig + $(basename "$frag"))" >&2
make -s ARCH=x86_64 tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null
make -s ARCH=x86_64 olddefconfig >/dev/null

# Every option of the fragment must have survived olddefconfig.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF "$line" .config || { echo "build-kernel: lost: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo absent))" >&2; missing=1; } ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      if grep -qE "^$opt=" .config; then echo "build-kernel: should be unset: $opt" >&2; missing=1; fi ;;
  esac
done < "$frag"
if [ "$missing" -ne 0 ]; then
  echo "build-kernel: options of $frag did not survive olddefconfig (missing dependencies?)" >&2
  exit 1
fi

echo "build-kernel: building bzImage with $(nproc) jobs" >&2
make -s ARCH=x86_64 -j"$(nproc)" bzImage >&2
mkdir -p "$out"
cp arch/x86/boot/bzImage "$out/bzImage"
cp .config "$out/config"
cd /
rm -rf "$work"
echo "build-kernel: built $out/bzImage ($(stat -c %s "$out/bzImage") bytes)" >&2
echo "$out/bzImage"
