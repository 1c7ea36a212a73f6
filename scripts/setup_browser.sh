# Sourced by scripts/test.sh: tests/test_space.py renders the Gradio Space in a real headless browser
# (Debian's chromium). Install it when missing and possible (apt-get as root); otherwise that one
# test skips and says why. The demo does not need it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup_browser: installing chromium (apt-get) for the Space's browser test" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              chromium fonts-dejavu-core; } >/dev/null 2>&1 \
            || echo "setup_browser: apt-get could not install chromium; the browser test will be skipped" >&2
    else
        echo "setup_browser: no chromium and no root apt-get; the browser test will be skipped" >&2
    fi
fi
