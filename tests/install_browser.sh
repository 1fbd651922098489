#!/bin/sh
# Install headless Chromium and chromedriver from Debian's packages for tests/test_serve_page.py.
# Does nothing when both are there; installs them as root or with passwordless sudo; otherwise
# says why not and exits 0 (the browser test then skips with that reason).
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser test: no apt-get here; install Chromium and chromedriver to run it" >&2
    exit 0
fi
if [ "$(id -u)" = "0" ]; then
    run=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run="sudo -n"
else
    echo "browser test: not root and no passwordless sudo; skipping the Chromium install" >&2
    exit 0
fi
echo "installing chromium and chromium-driver (Debian packages) for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
$run apt-get update -qq >/dev/null &&
    $run apt-get install -y -qq chromium chromium-driver >/dev/null ||
    echo "browser test: installing chromium/chromium-driver failed; it will skip" >&2
exit 0
