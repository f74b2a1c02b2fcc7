#!/usr/bin/env bash
# Checks what the local stack and the tests need before anything starts, and says how to fix it.
# Usage: check_prereqs.sh [python|test|stack|ports] ...
set -uo pipefail
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(python)
fail=0
say() { echo "prerequisite missing: $*" >&2; fail=1; }

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

need_emulators() {
  if ! command -v java >/dev/null 2>&1; then
    say "java not found: the Pub/Sub emulator needs a Java 11+ runtime (Debian: apt-get install default-jre-headless)"
  else
    local jv
    # `java -version` prints e.g. 'openjdk version "17.0.15"' or 'java version "1.8.0_392"'.
    jv=$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.\([0-9][0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -n 1)
    set -- $jv
    local major=${1:-0}
    [ "$major" = "1" ] && major=${2:-0}
    [ "$major" -ge 11 ] 2>/dev/null \
      || say "java is version ${major}; the Pub/Sub emulator needs Java 11+ (Debian: apt-get install default-jre-headless)"
  fi
  if ! command -v gcloud >/dev/null 2>&1; then
    say "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then: gcloud components install beta pubsub-emulator (Debian package: google-cloud-cli-pubsub-emulator)"
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
    say "the Pub/Sub emulator component is not installed: gcloud components install beta pubsub-emulator (Debian package: google-cloud-cli-pubsub-emulator)"
  fi
  command -v gsutil >/dev/null 2>&1 || say "gsutil not found: it ships with the Google Cloud CLI (gcloud components install gsutil)"
}

need_test_services() {
  # The Django app's tests run on a throw-away PostgreSQL server; the viewer's test drives Chromium.
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    say "PostgreSQL's initdb not found: the Django tests start their own server (Debian: apt-get install postgresql)"
  fi
  [ -x /usr/bin/chromium ] \
    || say "/usr/bin/chromium not found: the viewer's browser test drives it (Debian: apt-get install chromium)"
}

need_orthanc() {
  # The local DICOMweb store (infra/local/orthanc.py): the Orthanc server and its DICOMweb plugin.
  if ! command -v Orthanc >/dev/null 2>&1 && [ ! -x /usr/sbin/Orthanc ]; then
    say "Orthanc not found: the local stack's DICOMweb store (Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb)"
  elif [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    say "the Orthanc DICOMweb plugin is missing (Debian/Ubuntu: apt-get install orthanc-dicomweb)"
  fi
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

for w in "${want[@]}"; do
  case "$w" in
    python) need_python ;;
    test) need_python; need_emulators; need_orthanc; need_test_services ;;
    stack) need_python; need_emulators; need_orthanc ;;
    ports) need_free_ports ;;
    *) echo "check_prereqs.sh: unknown check $w" >&2; exit 2 ;;
  esac
done
exit $fail
