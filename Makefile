# `make test`: fresh machine -> venv with CPU torch -> requirements at constraints.txt -> system readers ->
# the floor subset (`make test-floor`) -> pytest.
# `make demo`: the bundled workflow on the built-in demo model through a real ComfyUI server.
# `make demo-model`: train a demo model from scratch on CPU with the issue-13 recipe and install it in
# layert2v_core/demo_model/ (full-scale wall time not measured yet: see training/README.md).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
BROWSER_DIR := tests/browser
APT_PKGS := ffmpeg openimageio-tools chromium blender

.PHONY: test test-floor demo demo-model venv system-deps browser-deps bench clean

venv: $(VENV)/.installed

# requirements.txt states ranges (what artists get); constraints.txt pins the newest set the full suite
# passed, so every machine tests the same versions (tools/freeze_constraints.py writes it).
$(VENV)/.installed: requirements.txt requirements-test.txt constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel instead of GBs of CUDA packages.
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements.txt -r requirements-test.txt -c constraints.txt
	touch $@

# The other end of the ranges: every `>=` floor of requirements.txt installed exactly (the rest at their
# newest), in a venv of its own, running the tests that exercise diffusers, transformers, peft,
# safetensors, av and OpenEXR directly (about 3 CPU minutes). No ComfyUI host here: that stays on the
# constraints set. tests/test_text.py is left out: its reference, diffusers' own WanPipeline, does not
# import on diffusers 0.35 with transformers 5 (our code does not use it); test_demo_model.py runs the
# tokenizer and text encoder at the floor.
FLOOR_VENV  := .venv-floor
FLOOR_PY    := $(FLOOR_VENV)/bin/python
FLOOR_TESTS := tests/test_dit.py tests/test_pipeline.py tests/test_weights.py tests/test_mask_vae.py \
               tests/test_demo_model.py tests/test_export_layer_set.py

$(FLOOR_VENV)/.installed: requirements.txt
	test -x $(FLOOR_PY) || $(PY) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q torch==2.13.0
	sed -n 's/^\([A-Za-z0-9._-]*\)>=\([0-9][0-9.]*\).*/\1==\2/p' requirements.txt > $(FLOOR_VENV)/floors.txt
	$(FLOOR_PY) -m pip install -q -r requirements.txt pytest -c $(FLOOR_VENV)/floors.txt
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	@echo "floor versions: $$(tr '\n' ' ' < $(FLOOR_VENV)/floors.txt)"
	LAYERT2V_SKIP_COMFY=1 $(FLOOR_PY) -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

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
test: venv system-deps browser-deps test-floor
	$(VPY) -m pytest -q tests

demo: venv
	$(VPY) tools/demo.py

demo-model: venv
	$(VPY) -m training.demo_recipe

bench: venv
	$(VPY) bench/dit_overhead.py --preset mid
	$(VPY) bench/export.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .cache test-output $(BROWSER_DIR)/node_modules
