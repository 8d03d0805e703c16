#!/bin/sh
# The Debian packages the tests drive, installed when missing: `make test` calls this, so a fresh
# machine needs nothing done by hand. As root it runs apt-get; otherwise it says what to install.
#   chromium  -> /usr/bin/chromium  (web push page tests, headless)
#   prometheus -> /usr/bin/promtool (alert rules are checked with `promtool check rules`)
#   fonts-noto-cjk, libfribidi0 -> share cards with Chinese/Japanese/Korean and right-to-left
#                   headlines (tests/test_cards.py draws them)
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need chromium chromium
need promtool prometheus
have_file() { [ -e "$1" ] || missing="$missing $2"; }
have_file /usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc fonts-noto-cjk
/sbin/ldconfig -p 2>/dev/null | grep -q 'libfribidi.so.0 ' || missing="$missing libfribidi0"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages the tests need:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  exit 0
fi
echo "the tests need these Debian packages:$missing" >&2
echo "install them as root:  apt-get install$missing" >&2
exit 1
