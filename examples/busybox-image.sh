#!/bin/sh
# A python-less image made from Debian's busybox-static with `docker import`: no registry,
# no Dockerfile, nothing of netharness inside. topologies/own-software.yaml runs it.
#   examples/busybox-image.sh [TAG]        (make example-image does this)
set -eu
tag=${1:-netharness-example/busybox:1}
[ -x /bin/busybox ] || { echo "no /bin/busybox: apt-get install busybox-static" >&2; exit 3; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -s /bin/busybox "$root/$applet"
done
echo "hello from a python-less image" > "$root/www/index.html"
tar -C "$root" -c . | docker import -c 'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]' - "$tag" >/dev/null
echo "built $tag"
