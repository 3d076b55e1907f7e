#!/usr/bin/env bash
# The agent image's root file system, assembled in the Dockerfile's build stage after
# `scripts/setup.sh --image`: only what `policyd run` uses is copied into DEST (the final
# stage is `FROM scratch` + this tree), which is how the image stays a third of a Debian
# install with Python in it.
#   * Python: the interpreter and its standard library (less tests, IDLE, Tk, 2to3, pydoc
#     data, ensurepip), the virtualenv in /opt/policyd/.venv (less pip and setuptools);
#   * the tools the agent runs or loads: libnftables (and `nft`, for `kubectl exec` debugging),
#     iptables-legacy / iptables-nft with their extensions, ipset; `sh` (dash), and busybox's
#     applets (ls, cat, grep, ps, ...) where no program of that name is copied;
#   * every shared library those programs and Python's extension modules link to (ldd),
#     with a linker cache made for DEST (ldconfig -r);
#   * /etc: users, protocols and services (netbase), the CA bundle, the linker's config.
# No package manager: the image runs one program.
#   scripts/slim-root.sh DEST
set -euo pipefail
dest=${1:?usage: slim-root.sh DEST}
venv=/opt/policyd/.venv
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
[ -x "$venv/bin/policyd" ] || { echo "slim-root.sh: no $venv/bin/policyd: run scripts/setup.sh --image first" >&2; exit 1; }

cd /  # (cp --parents trips over relative parents from elsewhere)
mkdir -p "$dest"
# Merged /usr: /bin, /sbin, /lib, /lib64 are symlinks into /usr.
for top in /bin /sbin /lib /lib64; do [ -L "$top" ] && cp -a "$top" "$dest/"; done
mkdir -p "$dest"/{tmp,run,proc,sys,dev,root,var/tmp}
chmod 1777 "$dest/tmp" "$dest/var/tmp"

copy() {  # copy paths (files, symlinks and what they point to) into DEST, keeping their place
  local p
  for p in "$@"; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    p="$(readlink -f "$(dirname "$p")")/$(basename "$p")"  # /lib/x → /usr/lib/x: DEST's /lib is a symlink too
    cp -a --parents "$p" "$dest/"
    if [ -L "$p" ]; then
      local target
      target=$(readlink -f "$p") && [ -e "$target" ] && [ ! -e "$dest$target" ] && copy "$target"
    fi
  done
  return 0
}

say "slim root: packages' files (no docs, manuals, locales)"
packages=(python3-minimal python3.11-minimal iptables libip4tc2 libip6tc2 libxtables12 ipset libipset13
          nftables libnftables1 dash netbase)
for pkg in "${packages[@]}"; do
  dpkg-query -L "$pkg" | while read -r f; do
    case "$f" in /usr/share/doc/*|/usr/share/man/*|/usr/share/locale/*|/usr/share/lintian/*|/usr/share/bug/*) continue ;; esac
    [ -d "$f" ] && [ ! -L "$f" ] && continue
    copy "$f"
  done
done
copy /usr/sbin/*tables* /usr/sbin/ipset /usr/sbin/nft /bin/sh /usr/bin/sh /usr/bin/busybox
for applet in $(busybox --list); do
  [ -e "$dest/usr/bin/$applet" ] || [ -e "$dest/usr/sbin/$applet" ] || ln -s busybox "$dest/usr/bin/$applet"
done

say "slim root: Python's standard library and the virtualenv"
tar -C / -cf - --exclude='usr/lib/python3.11/test' --exclude='usr/lib/python3.11/idlelib' \
    --exclude='usr/lib/python3.11/tkinter' --exclude='usr/lib/python3.11/turtledemo' \
    --exclude='usr/lib/python3.11/ensurepip' --exclude='usr/lib/python3.11/lib2to3' \
    --exclude='usr/lib/python3.11/pydoc_data' usr/lib/python3.11 etc/python3.11 \
  | tar -C "$dest" -xf -
site=$(echo "$venv"/lib/python3*/site-packages)
tar -C / -cf - --exclude="${site#/}/pip" --exclude="${site#/}/pip-*" --exclude="${site#/}/setuptools" \
    --exclude="${site#/}/setuptools-*" --exclude="${site#/}/pkg_resources" --exclude="${site#/}/_distutils_hack" \
    --exclude="${site#/}/distutils-precedence.pth" --exclude="${venv#/}/bin/pip*" --exclude="${venv#/}/bin/activate*" \
    "${venv#/}" | tar -C "$dest" -xf -

say "slim root: the shared libraries they link to"
elves() { find "$dest" -xdev -type f \( -perm -u+x -o -name '*.so*' \) -print0 | while IFS= read -r -d '' f; do
  if [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then echo "$f"; fi; done; }
elves | while read -r f; do  # ldd lists the whole closure, libraries' own dependencies too
  ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'
done | sort -u | while read -r lib; do copy "$lib"; done

say "slim root: /etc"
copy /etc/passwd /etc/group /etc/nsswitch.conf /etc/ld.so.conf /etc/ld.so.conf.d /etc/ssl/certs/ca-certificates.crt \
     /usr/lib/ssl/openssl.cnf /etc/ssl/openssl.cnf /usr/lib/ssl/certs
ldconfig -r "$dest"
say "slim root: $(du -sh --apparent-size "$dest" | cut -f1) in $dest"
