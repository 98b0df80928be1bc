#!/bin/bash
# Builds the local cluster's container image (a directory image, the form rootless podman runs with
# --rootfs and Apptainer runs as a sandbox): the cluster's training environment as a site would ship
# it in an image. Called by stack.sh (setup_hpc); the cluster spec names it (containers.images).
#
#   build_image.sh <training venv> <image dir> <image name> <hpc root>
#
# The image holds the venv's base interpreter at its own path, the venv at /opt/venv (its python is
# the image's interpreter: /opt/venv/bin/python), every shared library the interpreter and the
# extension modules load (from ldd), and the mount points podman binds over (rootless podman cannot
# create them in a root-owned image). /etc/aifactory-image names the image, so a job can tell it runs
# inside. Files are hard links where they can be (same file system): building takes seconds.
set -euo pipefail
venv="$1" out="$2" name="$3" hpc_root="$4"
base="$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')"
tmp="$out.new"
rm -rf "$tmp"
mkdir -p "$tmp"/{tmp,dev,proc,sys,etc,run,opt} "$tmp$hpc_root" "$tmp$(dirname "$base")"
chmod 1777 "$tmp/tmp"
cp -al "$base" "$tmp$base" 2>/dev/null || cp -a "$base" "$tmp$base"
cp -al "$venv" "$tmp/opt/venv" 2>/dev/null || cp -a "$venv" "$tmp/opt/venv"
# the dynamic libraries the interpreter and every extension module load, as the host has them
{ readlink -f "$venv/bin/python"; find "$base" "$venv" -name '*.so*' -type f; } \
  | { xargs -r ldd 2>/dev/null || true; } \
  | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}' | sort -u \
  | while read -r lib; do
      case "$lib" in "$base"/*|"$venv"/*) continue ;; esac
      real="$(readlink -f "$lib")"
      mkdir -p "$tmp$(dirname "$real")"
      cp -L "$real" "$tmp$real"
      [ "$lib" = "$real" ] || { mkdir -p "$tmp$(dirname "$lib")"; ln -sfn "$real" "$tmp$lib" 2>/dev/null || true; }
    done
# Debian's merged /usr: /lib, /lib64, /bin are links into /usr
for l in lib lib64 bin sbin; do
  if [ -L "/$l" ] && [ ! -e "$tmp/$l" ]; then ln -s "$(readlink "/$l")" "$tmp/$l"; fi
done
echo "root:x:0:0:root:/tmp:/bin/false" >"$tmp/etc/passwd"
echo "root:x:0:" >"$tmp/etc/group"
ln -s ../proc/self/mounts "$tmp/etc/mtab"
: >"$tmp/etc/hosts"; : >"$tmp/etc/resolv.conf"; : >"$tmp/etc/hostname"; : >"$tmp/run/.containerenv"
echo "$name" >"$tmp/etc/aifactory-image"
chmod -R a+rX "$tmp"
rm -rf "$out"
mv "$tmp" "$out"
