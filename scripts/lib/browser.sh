# shellcheck shell=bash
# Chromium for the console's browser tests (api/tests/browser): installs
# Debian's `chromium` and `chromium-driver` when `chromedriver` is missing,
# as pg.sh installs PostgreSQL. Source pg.sh first (log, die).

need_chromium() {
  if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
    return 0
  fi
  command -v apt-get >/dev/null || die "chromium and chromedriver are missing and apt-get is not available; install Chromium and its WebDriver"
  log "installing Chromium and its WebDriver (apt-get install chromium chromium-driver)"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >&2
  command -v chromedriver >/dev/null || die "the chromium-driver package did not provide chromedriver"
}
