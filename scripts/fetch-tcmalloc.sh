#!/bin/sh
# Put tcmalloc (libtcmalloc_minimal) into DEST, the venv's lib/, for vLLM's CPU engine, which
# runs faster with it preloaded (vLLM's advice; see batchbin/engine_settings.py). Taken from the
# distribution's package without root; where that is impossible the engine runs without it.
dest=${1:?usage: fetch-tcmalloc.sh DEST}
for lib in "$dest"/libtcmalloc_minimal.so.4 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4; do
    [ -e "$lib" ] && { echo "tcmalloc: $lib"; exit 0; }
done
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "tcmalloc: no apt-get here; vLLM runs without it (batchbin doctor shows the preload)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download -q libtcmalloc-minimal4 >/dev/null 2>&1); then
    echo "tcmalloc: apt-get download libtcmalloc-minimal4 failed; vLLM runs without it"
    exit 0
fi
dpkg -x "$tmp"/libtcmalloc-minimal4_*.deb "$tmp/unpacked"
cp -P "$tmp"/unpacked/usr/lib/*/libtcmalloc_minimal.so.4* "$dest"/
echo "tcmalloc: $dest/libtcmalloc_minimal.so.4"
