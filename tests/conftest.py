"""Shared fixtures. The ComfyUI host ones live in tests/comfyhost; this file only wires them to pytest."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyhost.install import EXTRA_FRONTENDS, HOSTS, REPO_ROOT, ensure_installed, frontend_root
from comfyhost.models import install_tiny_models
from comfyhost.server import ComfyServer

NEWEST_FRONTEND = EXTRA_FRONTENDS[-1]
TEST_OUTPUT_DIR = REPO_ROOT / "test-output"  # gitignored: screenshots and the server log for people to look at

_startup_report: list[str] = []


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    TEST_OUTPUT_DIR.mkdir(exist_ok=True)
    return TEST_OUTPUT_DIR


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, test_output_dir) -> Iterator[ComfyServer]:
    """A real ComfyUI 0.30.0 server (CPU, 127.0.0.1, own base dir) with this pack in custom_nodes,
    serving the frontend that release pins (1.47.12).

    Installs the hosts on first use (under a minute, then a no-op). Skipped only when
    LAYERT2V_SKIP_COMFY=1; any install or start-up failure fails the tests that use it.
    """
    yield from _serve(tmp_path_factory, test_output_dir, "comfyui-server.log")


@pytest.fixture(scope="session")
def comfy_server_newest_frontend(tmp_path_factory, test_output_dir) -> Iterator[ComfyServer]:
    """The same ComfyUI 0.30.0 serving the newest frontend on PyPI (--front-end-root)."""
    yield from _serve(tmp_path_factory, test_output_dir, f"comfyui-server-frontend-{NEWEST_FRONTEND}.log",
                      front_end_root=frontend_root(NEWEST_FRONTEND))


@pytest.fixture(scope="session")
def comfy_server_0_3_75(tmp_path_factory, test_output_dir) -> Iterator[ComfyServer]:
    """The compatibility host: ComfyUI 0.3.75 (a year older) in the same venv."""
    yield from _serve(tmp_path_factory, test_output_dir, "comfyui-0.3.75-server.log", comfy_dir=HOSTS["0.3.75"].comfy_dir)


def _serve(tmp_path_factory, test_output_dir, log_name, front_end_root=None, comfy_dir=None):
    if os.environ.get("LAYERT2V_SKIP_COMFY") == "1":
        pytest.skip("LAYERT2V_SKIP_COMFY=1: tests in a real ComfyUI server are switched off")
    started = time.monotonic()
    main_dir = ensure_installed()  # a no-op once installed
    install_seconds = time.monotonic() - started
    server = ComfyServer(comfy_dir or main_dir, tmp_path_factory.mktemp("comfyui"), front_end_root=front_end_root,
                         test_packs=("python_path_probe",))
    install_tiny_models(server.base_dir / "models")  # before start: loaders list models at start-up
    try:
        server.start()
        _startup_report.append(f"{log_name}: install step {install_seconds:.1f} s; first /object_info "
                               f"{server.startup_seconds:.1f} s after process start")
        yield server
    finally:
        server.stop()
        if server.log_path.exists():  # kept beside the screenshots, for whoever reads a failed run
            shutil.copyfile(server.log_path, test_output_dir / log_name)


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster than two under load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))  # 2-core machines: avoid oversubscription


def pytest_terminal_summary(terminalreporter):
    for line in _startup_report:
        terminalreporter.write_line(line)
