#!/usr/bin/env bash
# Checks what the local stack and the tests need before anything starts. The system packages
# (the one list: infra/local/debian-packages) are installed here on Debian or Ubuntu as root;
# elsewhere, or with INSTALL_SYSTEM_PACKAGES=0, it stops with the one command that installs them.
# Every other missing tool is named with its fix.
# Usage: check_prereqs.sh [python|test|stack|ports] ...
set -uo pipefail
here=${BASH_SOURCE[0]%/*}
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
packages_file=$here/debian-packages
# Where os-release and the apt sources are read from (a test points this at a fake /etc).
etc=${CHECK_PREREQS_ETC:-/etc}
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(python)

# One pass of the checks fills these: messages for what no package here fixes, and the packages
# (with what each is for) that supply what is missing.
fail=0 msgs=() pkgs=() whys=()
say() { msgs+=("prerequisite missing: $*"); fail=1; }
want_pkg() {
  local p
  for p in ${pkgs[@]+"${pkgs[@]}"}; do [ "$p" = "$1" ] && return; done
  pkgs+=("$1"); whys+=("$2"); fail=1
}

# A probe from debian-packages: a command on PATH or an absolute path (a glob); a|b = either one.
present() {
  local alt f alts
  IFS='|' read -ra alts <<<"$1"
  for alt in "${alts[@]}"; do
    case "$alt" in
      /*) for f in $alt; do [ -e "$f" ] && return 0; done ;;
      *) command -v "$alt" >/dev/null 2>&1 && return 0 ;;
    esac
  done
  return 1
}

# need_packages LEVEL...: the packages of debian-packages needed by those levels whose tool is missing.
need_packages() {
  local pkg level probe why l
  if [ ! -r "$packages_file" ]; then
    say "$packages_file not found (the list of system packages)"
    return
  fi
  while read -r pkg level probe why; do
    case "$pkg" in '' | '#'*) continue ;; esac
    for l in "$@"; do
      if [ "$l" = "$level" ]; then
        present "$probe" || want_pkg "$pkg" "$why"
        break
      fi
    done
  done <"$packages_file"
}

need_python() {
  local py=${PYTHON:-python3.11}
  if ! command -v "$py" >/dev/null 2>&1; then
    say "$py not found. Install Python 3.11+ (Debian: apt-get install python3.11 python3.11-venv) or run with PYTHON=/path/to/python3.11+"
    return
  fi
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || say "$py is older than 3.11. Install Python 3.11+ or pass PYTHON=/path/to/python3.11+"
  "$py" -c 'import venv, ensurepip' 2>/dev/null \
    || say "$py lacks venv/ensurepip (Debian: apt-get install python3.11-venv)"
}

# Google's apt repository (where the google-cloud-cli packages come from) is configured here.
google_apt_repo() {
  grep -qs 'packages\.cloud\.google\.com/apt' "$etc/apt/sources.list" \
    "$etc"/apt/sources.list.d/*.list "$etc"/apt/sources.list.d/*.sources
}

need_emulators() {
  # Whether java is on PATH at all is debian-packages' check; here, that it is 11 or newer.
  if command -v java >/dev/null 2>&1; then
    local jv major
    # `java -version` prints e.g. 'openjdk version "17.0.15"' or 'java version "1.8.0_392"'.
    jv=$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.\([0-9][0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -n 1)
    # shellcheck disable=SC2086 # split "major minor" into $1 $2
    set -- $jv
    major=${1:-0}
    [ "$major" = "1" ] && major=${2:-0}
    [ "$major" -ge 11 ] 2>/dev/null \
      || want_pkg default-jre-headless "java here is version ${major}: the Pub/Sub emulator needs Java 11+"
  fi
  if ! command -v gcloud >/dev/null 2>&1; then
    if debian_like && google_apt_repo; then
      want_pkg google-cloud-cli "gcloud: the Google Cloud CLI"
      want_pkg google-cloud-cli-pubsub-emulator "the Pub/Sub emulator"
    else
      say "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then: gcloud components install beta pubsub-emulator (Debian package: google-cloud-cli-pubsub-emulator)"
    fi
    return
  fi
  # A throw-away configuration: the check neither reads nor touches the user's gcloud settings
  # and never waits on a prompt.
  local root cfg
  cfg=$(mktemp -d)
  root=$(CLOUDSDK_CONFIG="$cfg" CLOUDSDK_CORE_DISABLE_PROMPTS=1 \
    CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=1 \
    gcloud info --format='value(installation.sdk_root)' </dev/null 2>/dev/null)
  rm -rf "$cfg"
  if [ -z "$root" ] || [ ! -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]; then
    # gcloud from Google's apt repository takes its components as packages too.
    if debian_like && google_apt_repo && dpkg -s google-cloud-cli >/dev/null 2>&1; then
      want_pkg google-cloud-cli-pubsub-emulator "the Pub/Sub emulator"
    else
      say "the Pub/Sub emulator component is not installed: gcloud components install beta pubsub-emulator (Debian package: google-cloud-cli-pubsub-emulator)"
    fi
  fi
  command -v gsutil >/dev/null 2>&1 || say "gsutil not found: it ships with the Google Cloud CLI (gcloud components install gsutil)"
}

need_free_ports() {
  # The stack's own check (one list of ports and defaults, LOCAL_*_PORT overrides); it names the
  # process that holds a busy port. Needs the virtual environment, so it runs after `make venv`.
  local py=${VENV:-.venv}/bin/python
  if [ ! -x "$py" ]; then
    say "$py not found: run make venv first"
    return
  fi
  "$py" -m infra.local.stack_cli check-ports || fail=1
}

debian_like() {
  local id
  for id in $(sed -n 's/^ID\(_LIKE\)\{0,1\}=//p' "$etc/os-release" 2>/dev/null | tr -d "\"'"); do
    case "$id" in debian | ubuntu) return 0 ;; esac
  done
  return 1
}

is_root() { [ "$(id -u 2>/dev/null)" = 0 ]; }

may_install() {
  case "${INSTALL_SYSTEM_PACKAGES:-1}" in 0 | no | false | off) return 1 ;; esac
  debian_like && is_root && command -v apt-get >/dev/null 2>&1
}

check_all() {
  fail=0 msgs=() pkgs=() whys=()
  local w
  for w in "${want[@]}"; do
    case "$w" in
      python) need_python ;;
      test) need_python; need_packages stack test; need_emulators ;;
      stack) need_python; need_packages stack; need_emulators ;;
      ports) need_free_ports ;;
      *) echo "check_prereqs.sh: unknown check $w" >&2; exit 2 ;;
    esac
  done
}

# For which commands, e.g. "make test", and "dicom3tools (dciodvfy: ...), dcmtk (...)".
for_what() {
  local w text=""
  for w in "${want[@]}"; do
    case "$w" in
      test) text+="${text:+ and }make test" ;;
      stack) text+="${text:+ and }make up/make demo" ;;
    esac
  done
  echo "${text:-this}"
}
packages_and_why() {
  local i text=""
  for i in "${!pkgs[@]}"; do text+="${text:+, }${pkgs[$i]} (${whys[$i]})"; done
  echo "$text"
}

check_all
if [ ${#pkgs[@]} -gt 0 ] && may_install; then
  echo "installing what $(for_what) needs and this machine lacks: $(packages_and_why) (INSTALL_SYSTEM_PACKAGES=0 only checks)"
  if ! apt-get update -qq \
    || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
    echo "prerequisite missing: apt-get could not install ${pkgs[*]} (its error is above)" >&2
    exit 1
  fi
  check_all
fi
for m in ${msgs[@]+"${msgs[@]}"}; do echo "$m" >&2; done
if [ ${#pkgs[@]} -gt 0 ]; then
  cmd="apt-get install ${pkgs[*]}"
  is_root || cmd="sudo $cmd"
  if debian_like; then
    echo "prerequisite missing for $(for_what): $(packages_and_why). Run: $cmd" >&2
  else
    echo "prerequisite missing for $(for_what): $(packages_and_why). On Debian/Ubuntu run: $cmd (elsewhere install the same with your package manager)" >&2
  fi
fi
exit $fail
