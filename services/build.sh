#!/usr/bin/env bash
# Build keel's standard services into one OCI image layout (index.json + blobs/sha256), the
# layout `keel build --store DIR` reads. Each image is tagged keel/NAME:latest.
#
#   services/build.sh [OUT_DIR] [NAME...]        (default: target/services, every service)
#
# A service is a directory services/NAME/ with:
#   image        shell variables: applets (static busybox applets to link), debs (Debian
#                packages unpacked, not installed: their daemons never run on the build
#                host), binaries (programs, from the host or those packages, given the shared
#                libraries ldd finds),
#                entrypoint (JSON array)
#   config.json  the container defaults the image declares (capabilities, binds, ...),
#                carried as the image label org.mobyproject.config; a manifest overrides them
#   rootfs/      files copied as they are
# and optionally, in `image`, copies="SRC:DEST ..." (host files put at DEST) and no_base=1 (an
# image of files only, without the directories of a root filesystem).
# Layers are reproducible (sorted, owner 0, mtime 0, gzip -n): the same packages give the
# same digests, so running this again changes nothing.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/target/services}
shift || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for d in "$top"/services/*/; do [ -f "$d/image" ] && names+=("$(basename "$d")"); done
fi
debcache=${KEEL_DEB_CACHE:-/var/cache/keel/debs}
busybox=${BUSYBOX:-/bin/busybox}
file "$busybox" 2>/dev/null | grep -q 'statically linked' ||
  { echo "services: $busybox is not a static busybox (scripts/setup.sh installs busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}\n' > "$out/oci-layout"

# Store stdin as a blob; print its digest (hex).
blob() {
  local tmp="$out/blobs/sha256/.tmp.$$" hex
  cat > "$tmp"
  hex=$(sha256sum "$tmp" | cut -c1-64)
  mv "$tmp" "$out/blobs/sha256/$hex"
  echo "$hex"
}
# A JSON string holding the compacted contents of a JSON file.
json_string() { tr -d '\n' < "$1" | sed -e 's/[[:space:]]\{2,\}/ /g' -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$/"/'; }

# Copy a program and the shared libraries it needs, at the same paths: from the host, or
# already in the rootfs (from a Debian package), then only its libraries are added.
copy_with_libs() {
  local root=$1 prog=$2 lib elf
  if [ -e "$root$prog" ]; then
    elf=$root$prog
  else
    [ -e "$prog" ] || { echo "services: $prog is missing on this host (see scripts/setup.sh)" >&2; exit 1; }
    install -D -m 0755 "$prog" "$root$prog"
    elf=$prog
  fi
  for lib in $(ldd "$elf" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    # Libraries reach the image by their real file, under the name the loader asks for.
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# Unpack a Debian package (downloaded once into the cache) into the rootfs.
unpack_deb() {
  local root=$1 pkg=$2 deb
  mkdir -p "$debcache"
  deb=$(ls "$debcache/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$deb" ]; then
    echo "services: downloading the Debian package $pkg" >&2
    (cd "$debcache" && { apt-get download -q "$pkg" 2>/dev/null || { apt-get update -q >&2 && apt-get download -q "$pkg"; }; } >&2)
    deb=$(ls "$debcache/${pkg}"_*.deb | sort -V | tail -n1)
  fi
  dpkg-deb -x "$deb" "$root"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/etc/init.d" "$root/lib/systemd" "$root/etc/apparmor.d"
}

entries=()
for name in "${names[@]}"; do
  dir="$top/services/$name"
  [ -f "$dir/image" ] || { echo "services: no service $name (no $dir/image)" >&2; exit 1; }
  applets="" binaries="" debs="" copies="" no_base="" entrypoint="null"
  env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
  # shellcheck source=/dev/null
  . "$dir/image"
  root="$work/$name"
  mkdir -p "$root"
  if [ -z "$no_base" ]; then
    mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,run,var,root}
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
  fi
  for c in $copies; do install -D -m 0644 "${c%%:*}" "$root${c#*:}"; done
  if [ -n "$applets" ]; then
    install -m 0755 "$busybox" "$root/bin/busybox"
    [ "$applets" = all ] && applets=$("$busybox" --list)
    for a in $applets; do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
  fi
  for p in $debs; do unpack_deb "$root" "$p"; done
  for b in $binaries; do copy_with_libs "$root" "$b"; done
  [ -d "$dir/rootfs" ] && cp -a "$dir/rootfs/." "$root/"

  # The layer: sorted, fixed owners and times, no pax timestamps, gzip without a name/time.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -C "$root" -cf "$work/$name.tar" .
  diff_id=$(sha256sum "$work/$name.tar" | cut -c1-64)
  layer=$(gzip -9n < "$work/$name.tar" | blob)
  layer_size=$(stat -c %s "$out/blobs/sha256/$layer")
  labels="{}"
  [ -f "$dir/config.json" ] && labels="{\"org.mobyproject.config\":$(json_string "$dir/config.json")}"
  config=$(printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":%s,"WorkingDir":"/","Labels":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entrypoint" "$env" "$labels" "$diff_id" | blob)
  config_size=$(stat -c %s "$out/blobs/sha256/$config")
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" | blob)
  manifest_size=$(stat -c %s "$out/blobs/sha256/$manifest")
  entries+=("$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"keel/%s:latest"}}' \
    "$manifest" "$manifest_size" "$name")")
  echo "services: keel/$name:latest sha256:$manifest ($layer_size bytes)" >&2
done

# index.json: the images built now, plus those of earlier runs for other services.
if [ -f "$out/index.json" ]; then
  for e in $(grep -o '{"mediaType":"application/vnd.oci.image.manifest.v1+json"[^}]*}}' "$out/index.json"); do
    n=$(printf '%s' "$e" | sed -n 's/.*"keel\/\([^:"]*\):latest".*/\1/p')
    case " ${names[*]} " in *" $n "*) ;; *) entries+=("$e") ;; esac
  done
fi
sorted=$(printf '%s\n' "${entries[@]}" | LC_ALL=C sort | paste -sd, -)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}\n' "$sorted" > "$out/index.json.tmp"
mv "$out/index.json.tmp" "$out/index.json"
# Blobs no image refers to any more (an earlier build of a changed service) go.
for b in "$out"/blobs/sha256/*; do
  h=$(basename "$b")
  grep -q "$h" "$out/index.json" && continue
  grep -qs "$h" $(grep -o 'sha256:[0-9a-f]*' "$out/index.json" | cut -c8- | sed "s|^|$out/blobs/sha256/|") && continue
  rm -f "$b"
done
echo "$out"
