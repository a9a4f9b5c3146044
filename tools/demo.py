"""`make demo`: the bundled workflow through a real ComfyUI server, layer set copied to ./output/.

Installs the ComfyUI 0.30.0 host on first use (.cache/comfyui), starts it on 127.0.0.1 with
this pack, runs workflows/layered_t2v.json on the built-in demo model (layert2v_core/demo_model/, a
miniature LayerT2V trained by `make demo-model` on synthetic shapes: 64x64, 17 frames) and prints the
files it wrote. Nothing is downloaded and no model files need to be placed in ComfyUI's folders.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from comfyhost.install import ensure_installed  # noqa: E402
from layert2v_core.demo_model import demo_model_paths  # noqa: E402
from comfyhost.server import ComfyServer  # noqa: E402
from comfyhost.workflow import ui_to_api  # noqa: E402

WORKFLOW = ROOT / "workflows" / "layered_t2v.json"
OUTPUT = ROOT / "output"


def main() -> int:
    try:
        demo_model_paths()  # the loaders list it only when its files are complete
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    comfy_dir = ensure_installed()
    with tempfile.TemporaryDirectory(prefix="layert2v-demo-") as base:
        base = Path(base)
        server = ComfyServer(comfy_dir, base).start()
        try:
            print(f"ComfyUI {server.base_url} up in {server.startup_seconds:.1f} s; running {WORKFLOW.name}")
            api = ui_to_api(json.loads(WORKFLOW.read_text()), server.object_info())
            started = time.monotonic()
            entry = server.wait(server.queue_prompt(api), timeout=1800)
            if entry["status"]["status_str"] != "success":
                errors = [m[1].get("exception_message") for m in entry["status"]["messages"] if m[0] == "execution_error"]
                print(f"workflow failed: {errors}", file=sys.stderr)
                return 1
            folder_rel = next(o["layert2v_folder"][0] for o in entry["outputs"].values() if "layert2v_folder" in o)
            OUTPUT.mkdir(exist_ok=True)
            target = OUTPUT / time.strftime("layert2v_%Y%m%d-%H%M%S")
            shutil.copytree(server.output_dir / folder_rel, target, dirs_exist_ok=False)
        finally:
            server.stop()
    print(f"workflow ran in {time.monotonic() - started:.1f} s; layer set: {target}")
    for path in sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in (".mov", ".mp4", ".json")):
        print(f"  {path.relative_to(ROOT)}")
    print(f"  + PNG sequences under {target.relative_to(ROOT)}/png16/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
