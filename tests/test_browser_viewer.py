"""The pack as an artist uses it: the real ComfyUI 0.30.0 frontend in Debian's chromium, driven by a
script that clicks (tests/browser/user_session.mjs, playwright-core from npm).

Frontends: 1.47.12 (pinned by ComfyUI 0.30.0) and 1.58.1 (newest on PyPI, --front-end-root), each
with the classic canvas and with "Nodes 2.0". Screenshots land in test-output/ for people to look at;
docs/layer_viewer.png in the README is the pinned/classic one (demo model, 17 frames).

The viewer is held to what a stock Preview Image in the same graph does: both come back when the
artist returns to the workflow's tab (the frontend restores the tab's outputs); after a page reload
both frontends show neither (they keep no outputs across a reload), and the viewer must not differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyhost.browser import run_user_session, user_session_unavailable

WORKFLOWS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
# Enough to check the UI: the demo model needs ~20 steps at 64 px to look right; PNG16 is the one format
# kept (the viewer's strips are written whatever the switches say).
QUICK = {"LayerT2VSampler": {"width": 32, "height": 32, "frames": 5, "steps": 2},
         "LayerT2VSaveLayers": {"prores_4444": False, "h264_preview": False}}
TWO_FOREGROUNDS = "layered_t2v_two_foregrounds"
EXPECTED_TILES = "full,recomposite,background,foreground_1,foreground_2"
_seed = iter(range(1000, 2000))  # a new seed each run: ComfyUI would answer a repeated prompt from its cache


@pytest.fixture(autouse=True)
def _browser_available():
    reason = user_session_unavailable()
    if reason:
        pytest.skip(reason)


def use_renderer(server, nodes_2: bool) -> None:
    """The frontend's own setting for the "Nodes 2.0" (Vue) renderer; read at page load."""
    server.post("/settings/Comfy.VueNodes.Enabled", nodes_2)


def session(server, name, workflows, test_output_dir, nodes_2=False) -> dict:
    use_renderer(server, nodes_2)
    try:
        report = run_user_session(server.base_url, name, test_output_dir / "browser", workflows)
    finally:
        use_renderer(server, False)
    (test_output_dir / "browser" / f"{name}_report.json").write_text(json.dumps(report, indent=1))
    assert not report.get("error"), f"the session stopped: {report['error']}"
    ours = [r for r in report["failedRequests"] if "/view?" in r or "/extensions/layert2v" in r]
    assert not ours, ours
    assert not [m for m in report["consoleErrors"] if "layert2v" in m.lower()], report["consoleErrors"]
    assert report["otherViewImages"] == [], "the frontend's own gallery shows our files as well"
    return report


def check_viewers_decoded(result: dict) -> None:
    assert result["viewers"], "no layer viewer appeared"
    for viewer in result["viewers"]:
        assert viewer["state"] == "ready", viewer
        assert viewer["strips"], viewer
        for strip in viewer["strips"]:
            assert strip["complete"] and strip["naturalWidth"] > 0 and strip["naturalHeight"] > 0, strip


def check_prompt_boxes_follow(result: dict) -> None:
    assert result["initialBoxes"] == result["initialForegrounds"], result
    for step in result.get("steps", []):
        assert step["widgetValue"] == step["foregrounds"], f"clicking the arrows did not reach it: {result['steps']}"
        assert step["visibleBoxes"] == step["foregrounds"], result["steps"]


def check_plays(playback: dict, frames: int) -> None:
    samples, fps = playback["samples"], playback["fps"]
    advanced = sum((b["frame"] - a["frame"]) % frames for a, b in zip(samples, samples[1:]))
    seconds = (samples[-1]["ms"] - samples[0]["ms"]) / 1000
    assert len({s["frame"] for s in samples}) >= 3, samples
    # The clock runs at the generation's fps; the wide band allows for a loaded 2-core machine.
    assert 0.5 * fps <= advanced / seconds <= 1.5 * fps, (advanced, seconds, fps)


def check_viewer_plays(result: dict) -> None:
    assert result["viewerLayers"] == EXPECTED_TILES
    assert result["blankFrames"] == [], result["blankFrames"][:5]
    assert result["matte"]["flag"] == "true" and result["matte"]["foregroundTilesGrey"] == [True, True], result["matte"]
    check_plays(result["playback"], result["frames"])


def check_viewer_like_stock_preview(result: dict) -> None:
    trip = result["roundTrip"]
    assert trip["onOtherTab"] == {"viewer": "none", "stockPreview": False}, trip["onOtherTab"]
    assert trip["back"]["stockPreview"], "the stock Preview Image did not come back either: the frontend changed"
    assert trip["back"]["viewer"] == "ready", f"the layer viewer is gone after a tab round trip: {trip['back']}"
    assert trip["strips"] == trip["before"], "the viewer came back with other strips than the run wrote"
    assert min(trip["opaqueMeanAlpha"]) >= 250, trip["opaqueMeanAlpha"]  # drawn, not blank tiles
    check_plays(trip["playback"], result["frames"])
    after_reload = result["reload"]
    assert (after_reload["viewer"] == "ready") == after_reload["stockPreview"], after_reload


def with_new_seed(widgets: dict) -> dict:
    return {**widgets, "LayerT2VSampler": {**widgets["LayerT2VSampler"], "seed": next(_seed)}}


def viewer_session(server, name, test_output_dir, nodes_2, widgets) -> None:
    workflow = {"template": TWO_FOREGROUNDS, "foregroundCounts": [1, 3, 2], "inspectViewer": True,
                "stockPreview": True, "widgets": with_new_seed(widgets)}
    report = session(server, name, [workflow], test_output_dir, nodes_2)
    result = report["workflows"][0]
    assert result["vueNodes"] == nodes_2
    check_prompt_boxes_follow(result)
    check_viewers_decoded(result)
    check_viewer_plays(result)
    check_viewer_like_stock_preview(result)


def test_viewer_pinned_frontend_classic(comfy_server, test_output_dir):
    # The README's screenshot: the demo model's 17 frames, with fewer steps than the workflow's 20.
    demo = {"LayerT2VSampler": {"frames": 17, "steps": 8}}  # the workflow's own format switches
    viewer_session(comfy_server, "frontend-1.47.12_classic", test_output_dir, False, demo)


def test_viewer_pinned_frontend_nodes_2(comfy_server, test_output_dir):
    viewer_session(comfy_server, "frontend-1.47.12_nodes2", test_output_dir, True, QUICK)


def test_viewer_newest_frontend_classic(comfy_server_newest_frontend, test_output_dir):
    viewer_session(comfy_server_newest_frontend, "frontend-1.58.1_classic", test_output_dir, False, QUICK)


def test_viewer_newest_frontend_nodes_2(comfy_server_newest_frontend, test_output_dir):
    viewer_session(comfy_server_newest_frontend, "frontend-1.58.1_nodes2", test_output_dir, True, QUICK)


def test_every_bundled_workflow_opens_runs_and_shows_its_layers(comfy_server, test_output_dir):
    workflows = [{"template": name, "widgets": with_new_seed(QUICK)} for name in WORKFLOWS]
    report = session(comfy_server, "all-workflows", workflows, test_output_dir)
    assert [r["template"] for r in report["workflows"]] == WORKFLOWS
    for result in report["workflows"]:
        assert "LayerT2VSaveLayers" in result["nodeTypes"], result
        check_prompt_boxes_follow(result)
        check_viewers_decoded(result)
