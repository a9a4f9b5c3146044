# `make test`: fresh machine -> venv with CPU torch -> requirements -> system readers -> pytest.
# `make demo`: the bundled workflow on the built-in demo model through a real ComfyUI server.
# `make demo-model`: train a demo model from scratch on CPU with the issue-13 recipe and install it in
# layert2v_core/demo_model/ (full-scale wall time not measured yet: see training/README.md).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
BROWSER_DIR := tests/browser
APT_PKGS := ffmpeg openimageio-tools chromium blender

.PHONY: test demo demo-model venv system-deps browser-deps bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel instead of GBs of CUDA packages.
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements.txt -r requirements-test.txt
	touch $@

system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (install them as root; their tests will be skipped)"; fi; \
	fi

# playwright-core (no browser download: the tests drive Debian's chromium) for tests/test_browser_*.py
$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@if command -v npm >/dev/null; then cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm is missing: the browser tests will be skipped"; fi

browser-deps: $(BROWSER_DIR)/node_modules/.installed

# The ComfyUI hosts (0.30.0 + 0.3.75 + frontend 1.58.1) go to .cache/comfyui on the first test run.
test: venv system-deps browser-deps
	$(VPY) -m pytest -q tests

demo: venv
	$(VPY) tools/demo.py

demo-model: venv
	$(VPY) -m training.demo_recipe

bench: venv
	$(VPY) bench/dit_overhead.py --preset mid
	$(VPY) bench/export.py

clean:
	rm -rf $(VENV) .cache test-output $(BROWSER_DIR)/node_modules
