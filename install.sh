#!/bin/sh
# SPDX-License-Identifier: ISC
# make install / make uninstall: a self-contained installation.
#
#   $LIBDIR                the package and its dependencies, compiled; owned
#                          entirely by this installation
#   $LIBDIR/MANIFEST       every other file it put in place ("f path") and every
#                          directory it had to create ("d path")
#   $BINDIR/PROGRAM        "#!$PYTHON -IS", $LIBDIR put on sys.path, bin/PROGRAM
#   $MANDIR/man[78]/*      the man pages
#
# Paths inside the files and the manifest never contain $DESTDIR.  Installing
# over an installation is an upgrade: what the old manifest lists and the new
# one does not is removed, and the library directory is swapped whole.
# Usage: install.sh install|uninstall; the Makefile sets the variables.
set -eu

PROG=install.sh
die() { echo "$PROG: fatal: $*" >&2; exit "${code:-100}"; }

action=${1:-}
top=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBDIR=${LIBDIR:-$PREFIX/lib/qtools}
MANDIR=${MANDIR:-$PREFIX/share/man}
FAST=${FAST:-}
PIPFLAGS=${PIPFLAGS:-}
PROGRAMS=${PROGRAMS:-}

for path in "$PREFIX" "$BINDIR" "$LIBDIR" "$MANDIR"; do
  case $path in
    /*) ;;
    *) die "$path: an installation path must be absolute" ;;
  esac
  case $path in
    *[!A-Za-z0-9/._+-]*) die "$path: an installation path may hold only letters, digits and /._+-" ;;
  esac
done
lib=$DESTDIR$LIBDIR
manifest=$lib/MANIFEST

uninstall() {
  [ -f "$manifest" ] || die "no installation in $lib (no MANIFEST)"
  # files first, then the directories install created, deepest first:
  # a directory that now holds something else stays
  sed -n 's/^f //p' "$manifest" | while IFS= read -r path; do
    rm -f "$DESTDIR$path"
  done
  dirs=$(sed -n 's/^d //p' "$manifest" | sort -r)
  rm -rf "$lib"
  for path in $dirs; do
    rmdir "$DESTDIR$path" 2>/dev/null || :
  done
}

# mkdirs DIR: create DIR and its parents, noting in $created those that did
# not exist (without $DESTDIR) and are ours to remove: below $PREFIX, or
# $PREFIX itself when installing in place (/usr/local in an empty staging
# directory is not the installation's).
mkdirs() {
  missing=""
  path=$1
  while [ ! -d "$DESTDIR$path" ]; do
    missing="$path $missing"
    path=$(dirname "$path")
  done
  for path in $missing; do
    mkdir "$DESTDIR$path"
    case $path in
      "$PREFIX"/*) ;;
      "$PREFIX") [ -z "$DESTDIR" ] || continue ;;
      *) continue ;;
    esac
    created="$created
d $path"
  done
}

install_all() {
  python=$(command -v "${PYTHON:-python3}") || die "${PYTHON:-python3} not found"
  case $python in
    /*) ;;
    *) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;;
  esac
  case $python in
    *[!A-Za-z0-9/._+-]*) die "$python: the interpreter's path must hold only letters, digits and /._+-" ;;
  esac
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "$python is older than Python 3.9"
  "$python" -m pip --version >/dev/null 2>&1 ||
    die "$python has no pip to fetch the dependencies (Debian: apt-get install python3-pip)"
  [ -n "$PROGRAMS" ] || die "no PROGRAMS given"
  # The dependencies, as setup.cfg names them.
  deps=$("$python" - "$top/setup.cfg" "$FAST" <<'EOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
text = cfg["options"]["install_requires"]
if sys.argv[2] not in ("", "0"):
    text += "\n" + cfg["options.extras_require"]["fast"]
print("\n".join(line.strip() for line in text.splitlines() if line.strip()))
EOF
  )

  created=""
  if [ -n "$DESTDIR" ]; then mkdir -p "$DESTDIR"; fi  # the staging root is the packager's
  mkdirs "$(dirname "$LIBDIR")"
  new=$lib.new.$$
  old=$lib.old.$$
  trap 'rm -rf "$new"' EXIT
  rm -rf "$new"
  mkdir "$new"
  echo "$deps" | tr '\n' '\0' | xargs -0 env PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$python" -m pip install -q --no-compile --target "$new" $PIPFLAGS ||
    code=111 die "unable to fetch the dependencies with $python -m pip"
  rm -rf "$new/bin"  # the dependencies' own scripts: not part of qtools
  mkdir "$new/qtools"
  cp "$top"/qtools/*.py "$new/qtools/"
  # compiled now, with the installed path inside: the programs never
  # write a .pyc (they run as qmaild) and never compile on a connection;
  # unchecked: the directory is replaced whole, so no source is ever stat()ed
  "$python" -m compileall -q --invalidation-mode unchecked-hash -d "$LIBDIR" "$new" >/dev/null ||
    code=111 die "unable to compile $new"
  chmod -R a+rX,go-w "$new"

  # The old installation's own list, and the directories it created.
  oldlist=""
  if [ -f "$manifest" ]; then
    oldlist=$(cat "$manifest")
    created="$created
$(grep '^d ' "$manifest" || :)"
  fi

  mkdirs "$BINDIR"
  mkdirs "$MANDIR/man7"
  mkdirs "$MANDIR/man8"
  files=""
  for program in $PROGRAMS; do
    files="$files
f $BINDIR/$program"
  done
  for page in "$top"/man/*.7 "$top"/man/*.8; do
    section=${page##*.}
    files="$files
f $MANDIR/man$section/$(basename "$page")"
  done
  printf '%s\n' "$created" "$files" | grep . | sort -u > "$new/MANIFEST"

  # The swap: the library first, then each program and page by rename.
  if [ -d "$lib" ]; then mv "$lib" "$old"; fi
  mv "$new" "$lib"
  trap - EXIT
  rm -rf "$old"
  for program in $PROGRAMS; do
    target=$DESTDIR$BINDIR/$program
    {
      echo "#!$python -IS"
      echo "import sys; sys.path[:0] = [\"$LIBDIR\"]"
      tail -n +2 "$top/bin/$program"
    } > "$target.new"
    chmod 755 "$target.new"
    mv -f "$target.new" "$target"
  done
  for page in "$top"/man/*.7 "$top"/man/*.8; do
    target=$DESTDIR$MANDIR/man${page##*.}/$(basename "$page")
    cp "$page" "$target.new"
    chmod 644 "$target.new"
    mv -f "$target.new" "$target"
  done
  # What the old installation had and this one has not.
  printf '%s\n' "$oldlist" | sed -n 's/^f //p' | while IFS= read -r path; do
    grep -qxF "f $path" "$manifest" || rm -f "$DESTDIR$path"
  done
  echo "installed qtools $("$python" -IS -c "import sys; sys.path[:0] = ['$lib']; import qtools; print(qtools.__version__)") for $python in $DESTDIR$PREFIX"
}

case $action in
  install) install_all ;;
  uninstall) uninstall ;;
  *) die "usage: install.sh install|uninstall" ;;
esac
