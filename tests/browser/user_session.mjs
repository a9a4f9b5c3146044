// One artist's session in the real ComfyUI frontend, driven in Debian's chromium by playwright-core:
// for each workflow: open it from the pack's templates, (add a stock Preview Image), (change the number of
// foregrounds), press Run, wait for the layer viewers; on one of them scrub every frame, toggle the matte,
// play; (switch to another workflow tab and back, then reload the page, comparing the viewer with the stock
// preview each time). Prints one JSON report line
// (the last line of stdout) that tests/test_browser_viewer.py asserts on; screenshots go to outDir.
//
//   node user_session.mjs '<json config>'     (see tests/comfyhost/browser.py: run_user_session)
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const report = { steps: [], consoleErrors: [], failedRequests: [], screenshots: [] };
const shot = async (target, name) => {
  const path = `${config.outDir}/${config.name}_${name}.png`;
  await target.screenshot({ path });
  report.screenshots.push(path);
};

const browser = await chromium.launch({
  executablePath: config.chromium,
  // As root chromium needs --no-sandbox; the rest keeps it off the (closed) network but for loopback.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") report.consoleErrors.push(m.text().slice(0, 400)); });
  page.on("response", (r) => {
    if (r.status() >= 400 && r.url().startsWith(config.url)) report.failedRequests.push(`${r.status()} ${r.url()}`);
  });
  report.workflows = [];
  for (const workflow of config.workflows) {
    const result = { template: workflow.template };
    report.workflows.push(result);
    await openTemplate(page, workflow.template, result);
    if (workflow.stockPreview) await addStockPreview(page);
    if (workflow.foregroundCounts) await changeForegrounds(page, workflow.foregroundCounts, result);
    result.viewers = await runFromUI(page, workflow.widgets);
    if (workflow.inspectViewer) await inspectViewer(page, result);
    if (workflow.stockPreview) {
      result.roundTrip = await tabRoundTrip(page, workflow.template);
      result.reload = await reload(page);
    }
  }
  // Nothing else on the page shows our files (the frontend's own gallery would, as broken stills); the
  // stock preview's files are temp ones.
  report.otherViewImages = await page.evaluate(() => [...document.querySelectorAll("img")]
    .filter((img) => img.src.includes("/view?") && new URL(img.src).searchParams.get("type") === "output"
      && !img.classList.contains("layert2v-strip")).map((img) => img.src));
  report.ok = true;
} catch (error) {
  report.error = String(error?.stack ?? error).slice(0, 3000);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));

async function openTemplate(page, template, result) {
  // The frontend's own template loading (?template=...&source=<pack>), as a shared link would.
  await page.goto(`${config.url}/?template=${template}&source=${config.pack}`);
  await page.waitForFunction(() => window.app?.graph?.nodes?.some((n) => n.type === "LayerT2VSaveLayers"),
    null, { timeout: 120000 });
  await page.waitForTimeout(1000);
  result.nodeTypes = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
  result.vueNodes = await page.evaluate(() => !!document.querySelector("[data-node-id]"));
  await focusNode(page, "LayerT2VPrompts");
  result.initialForegrounds = await widgetValue(page, "LayerT2VPrompts", "num_foregrounds");
  result.initialBoxes = await settledBoxes(page, result.initialForegrounds);
}

async function addStockPreview(page) {
  // A stock Preview Image on the decoder's full video, right of Save Layers (on screen with it: the
  // canvas loads a preview's images only when it draws the node).
  await page.evaluate(() => {
    const { graph } = window.app;
    const decoder = graph.nodes.find((n) => n.type === "LayerT2VDecodeLayers");
    const save = graph.nodes.find((n) => n.type === "LayerT2VSaveLayers");
    const preview = window.LiteGraph.createNode("PreviewImage");
    preview.pos = [save.pos[0] + Math.max(save.size[0], 360) + 60, save.pos[1]];
    graph.add(preview);
    decoder.connect(decoder.outputs.findIndex((o) => o.name === "full"), preview, 0);
    graph.setDirtyCanvas(true, true);
  });
  await page.waitForTimeout(500);
}

async function changeForegrounds(page, counts, result) {
  result.steps = [];
  for (const count of counts) {
    // Clicks on the widget's own arrows (classic canvas) or -/+ buttons (Nodes 2.0), one per step.
    let value = await widgetValue(page, "LayerT2VPrompts", "num_foregrounds");
    for (let guard = 0; value !== count && guard < 6; guard++) {
      await clickStepper(page, "LayerT2VPrompts", "num_foregrounds", count > value ? +1 : -1);
      await page.waitForTimeout(300);
      value = await widgetValue(page, "LayerT2VPrompts", "num_foregrounds");
    }
    result.steps.push({ foregrounds: count, widgetValue: value, visibleBoxes: await settledBoxes(page, count) });
  }
  await shot(page, "prompts");
}

async function runFromUI(page, widgets) {
  // Small sampler settings and fewer formats keep the CPU run short; then the Run button, as a user queues.
  for (const [type, values] of Object.entries(widgets)) {
    for (const [name, value] of Object.entries(values)) await setWidget(page, type, name, value);
  }
  const saveNodes = await page.evaluate(() => window.app.graph.nodes.filter((n) => n.type === "LayerT2VSaveLayers").length);
  await page.evaluate(() => { for (const v of document.querySelectorAll(".layert2v-viewer")) v.dataset.state = "stale"; });
  await page.getByRole("button", { name: "Run", exact: true }).first().click();
  await page.waitForFunction((count) => document.querySelectorAll(".layert2v-viewer[data-state=ready]").length >= count
    || document.querySelector(".layert2v-viewer[data-state=error]"), saveNodes, { timeout: config.runTimeoutMs });
  return page.evaluate(() => [...document.querySelectorAll(".layert2v-viewer")].map((root) => ({
    state: root.dataset.state,
    strips: [...root.querySelectorAll("img.layert2v-strip")].map((img) => ({
      src: img.src, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight })),
  })));
}

async function inspectViewer(page, result) {
  await focusNode(page, "LayerT2VSaveLayers");
  await page.waitForTimeout(800);
  const viewer = page.locator(".layert2v-viewer[data-state=ready]").first();
  result.viewerLayers = await page.evaluate(() => document.documentElement.dataset.layert2vViewerLayers);

  // Every frame drawn when scrubbed to (opaque layers fully covered).
  await viewer.locator("button.layert2v-play").click(); // pause
  const frames = Number(await viewer.locator("input.layert2v-scrubber").getAttribute("max")) + 1;
  result.frames = frames;
  result.blankFrames = [];
  for (let f = 0; f < frames; f++) {
    await viewer.locator("input.layert2v-scrubber").fill(String(f));
    const drawn = await viewer.evaluate((root) => [...root.querySelectorAll("canvas")].map((c) => {
      const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      let alpha = 0;
      for (let i = 3; i < data.length; i += 4) alpha += data[i];
      return { layer: c.dataset.layer, frame: Number(root.dataset.frame), meanAlpha: alpha / (data.length / 4) };
    }));
    for (const d of drawn) {
      if (d.frame !== f || (!d.layer.startsWith("foreground") && d.meanAlpha < 250)) result.blankFrames.push({ f, ...d });
    }
    if (f === Math.floor(frames / 2)) {
      await shot(viewer, "viewer_paused");
      // The whole node as it sits on the canvas (focusNode put its top left corner near 80, 120).
      const box = await viewer.boundingBox();
      const clip = { x: Math.max(0, box.x - 30), y: 50, width: box.width + 60, height: Math.min(950, box.y + box.height - 20) };
      await page.screenshot({ path: `${config.outDir}/${config.name}_node_paused.png`, clip });
      report.screenshots.push(`${config.outDir}/${config.name}_node_paused.png`);
    }
  }

  // Alpha matte toggle: foreground tiles turn grey (r = g = b everywhere).
  await viewer.locator("input.layert2v-matte-toggle").check();
  result.matte = await viewer.evaluate((root) => {
    const grey = [...root.querySelectorAll("canvas")].filter((c) => c.dataset.layer.startsWith("foreground")).map((c) => {
      const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      for (let i = 0; i < data.length; i += 4) if (data[i] !== data[i + 1] || data[i + 1] !== data[i + 2]) return false;
      return true;
    });
    return { flag: root.dataset.matte, foregroundTilesGrey: grey };
  });
  await shot(viewer, "viewer_matte");
  await viewer.locator("input.layert2v-matte-toggle").uncheck();

  // Play: the shown frame advances at about the generation's fps.
  await viewer.locator("button.layert2v-play").click();
  result.playback = await samplePlayback(viewer);
  await shot(viewer, "viewer_playing");
  await shot(page, "page");

}

async function samplePlayback(viewer) {
  // Sampled in the page on every animation frame: a round trip to the browser per sample takes longer
  // than a 5-frame loop on a loaded machine, and the frame count would alias.
  return viewer.evaluate((root) => new Promise((resolve) => {
    const samples = [];
    const started = performance.now();
    const sample = () => {
      const ms = performance.now() - started;
      samples.push({ ms: Math.round(ms), frame: Number(root.dataset.frame) });
      if (ms < 1500) requestAnimationFrame(sample);
      else resolve({ fps: Number(root.dataset.fps), samples });
    };
    sample();
  }));
}

async function tabRoundTrip(page, template) {
  // What an artist does between runs: another workflow tab (a new blank one), then back to this one.
  const before = await viewerStrips(page);
  await page.getByRole("button", { name: "Create a new blank workflow" }).click();
  await page.waitForFunction(() => !window.app.graph.nodes.some((n) => n.type === "LayerT2VSaveLayers"), null, { timeout: 30000 });
  await page.waitForTimeout(1000);
  const onOtherTab = await shown(page);
  await page.locator(".workflow-label", { hasText: new RegExp(`^${template}$`) }).click();
  await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type === "LayerT2VSaveLayers"), null, { timeout: 30000 });
  const back = await settledShown(page);
  const trip = { before, onOtherTab, back, strips: await viewerStrips(page) };
  if (back.viewer === "ready") {
    const viewer = page.locator(".layert2v-viewer[data-state=ready]").first();
    trip.playback = await samplePlayback(viewer);
    trip.opaqueMeanAlpha = await viewer.evaluate((root) => [...root.querySelectorAll("canvas")]
      .filter((c) => !c.dataset.layer.startsWith("foreground")).map((c) => {
        const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
        let alpha = 0;
        for (let i = 3; i < data.length; i += 4) alpha += data[i];
        return alpha / (data.length / 4);
      }));
  }
  await shot(page, "after_tab_round_trip");
  return trip;
}

async function reload(page) {
  await page.reload();
  await page.waitForFunction(() => window.app?.graph?.nodes?.some((n) => n.type === "LayerT2VSaveLayers"), null, { timeout: 120000 });
  const after = await settledShown(page);
  await shot(page, "after_reload");
  return after;
}

async function settledShown(page) {
  // A restored preview appears within a few frames; a loaded machine gets 10 s before we call it gone.
  let state = await shown(page);
  for (let waited = 0; !(state.viewer === "ready" && state.stockPreview) && waited < 10000; waited += 250) {
    await page.waitForTimeout(250);
    state = await shown(page);
  }
  return state;
}

async function shown(page) {
  // What the user sees: the layer viewer's state (none: absent) and whether the stock preview shows a
  // loaded image (the classic canvas draws node.imgs; Nodes 2.0 puts an <img> in the node).
  return page.evaluate(() => {
    const loaded = (img) => img.complete && img.naturalWidth > 0;
    const preview = window.app.graph.nodes.find((n) => n.type === "PreviewImage");
    const vueNode = preview && document.querySelector(`[data-node-id="${preview.id}"]`);
    return {
      viewer: document.querySelector(".layert2v-viewer")?.dataset.state ?? "none",
      stockPreview: !!preview && ((preview.imgs ?? []).some(loaded) || [...(vueNode?.querySelectorAll("img") ?? [])].some(loaded)),
    };
  });
}

async function viewerStrips(page) {
  return page.evaluate(() => [...document.querySelectorAll(".layert2v-viewer img.layert2v-strip")].map((img) => img.src));
}

async function focusNode(page, type) {
  // What a user does with scroll and zoom: bring the node to the top left at 100 %.
  await page.evaluate((type) => {
    const node = window.app.graph.nodes.find((n) => n.type === type);
    const canvas = window.app.canvas;
    canvas.ds.scale = 1;
    canvas.ds.offset = [-node.pos[0] + 80, -node.pos[1] + 120];
    canvas.setDirty(true, true);
  }, type);
  await page.waitForTimeout(500);
}

async function widgetValue(page, type, name) {
  return page.evaluate(([type, name]) => window.app.graph.nodes.find((n) => n.type === type)
    .widgets.find((w) => w.name === name).value, [type, name]);
}

async function clickStepper(page, type, name, direction) {
  const buttons = page.locator(`[aria-label="${name}"] button`);
  if (await buttons.count()) { // Nodes 2.0: a DOM number field with - and + buttons
    await (direction > 0 ? buttons.last() : buttons.first()).click();
    return;
  }
  // Classic canvas: the widget is drawn; its arrows sit at its left and right ends.
  const point = await page.evaluate(([type, name, direction]) => {
    const { canvas, graph } = window.app;
    const node = graph.nodes.find((n) => n.type === type);
    const widget = node.widgets.find((w) => w.name === name);
    const height = window.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20;
    const x = node.pos[0] + (direction > 0 ? node.size[0] - 22 : 22);
    const y = node.pos[1] + (widget.last_y ?? widget.y) + height / 2;
    const rect = canvas.canvas.getBoundingClientRect();
    return { x: rect.left + (x + canvas.ds.offset[0]) * canvas.ds.scale, y: rect.top + (y + canvas.ds.offset[1]) * canvas.ds.scale };
  }, [type, name, direction]);
  await page.mouse.click(point.x, point.y);
}

async function setWidget(page, type, name, value) {
  // The widget's own value + callback path, as the frontend runs it when a user edits the field.
  await page.evaluate(([type, name, value]) => {
    for (const node of window.app.graph.nodes.filter((n) => n.type === type)) {
      const widget = node.widgets.find((w) => w.name === name);
      widget.value = value;
      widget.callback?.(value, window.app.canvas, node);
    }
    window.app.graph.setDirtyCanvas(true, true);
  }, [type, name, value]);
}

async function settledBoxes(page, expected) {
  // The canvas places its text boxes on its next frames (slow on a loaded machine): give it 5 s.
  let boxes = await visiblePromptBoxes(page);
  for (let waited = 0; boxes !== expected && waited < 5000; waited += 250) {
    await page.waitForTimeout(250);
    boxes = await visiblePromptBoxes(page);
  }
  return boxes;
}

async function visiblePromptBoxes(page) {
  return page.evaluate(() => {
    const visible = (el) => el.checkVisibility({ checkVisibilityCSS: true, checkOpacity: true })
      && el.getBoundingClientRect().height > 0;
    // The classic canvas names a box by its placeholder, Nodes 2.0 by a label in the widget's row.
    const names = [...document.querySelectorAll("textarea")].filter(visible).map((box) => box.placeholder
      || box.closest("[data-testid=node-widget]")?.querySelector("[data-testid=widget-layout-field-label]")?.textContent
      || box.closest("[data-testid=node-widget]")?.textContent.trim().split(/\s/)[0]);
    return [1, 2, 3].filter((k) => names.includes(`foreground_${k}`)).length;
  });
}
