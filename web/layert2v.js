// LayerT2V frontend extension (plain ES module, served by ComfyUI at /extensions/<pack>/):
// - Layer Prompts: shows only as many foreground prompt boxes as `num_foregrounds` asks for;
// - Save Layers: a layer viewer that plays every layer of the last generation (film strips written
//   by the node into <layer set>/web_preview/), full and recomposite side by side, foregrounds over a
//   checkerboard with an alpha-matte toggle; built from the run (onExecuted) and rebuilt wherever the
//   frontend puts a node's outputs back (onNodeOutputsUpdated: a workflow tab shown again, a job
//   loaded from the queue), as its stock image previews are;
// - markers on <html> and on the viewer that the browser tests read.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MAX_FOREGROUNDS = 3;
const VIEWER_OUTPUT = "layert2v_viewer"; // the node's UI output key (nodes/save.py)
const SAVE_LAYERS = "LayerT2VSaveLayers";
const seenNodes = [];

function showForegroundBoxes(node) {
  const count = node.widgets?.find((w) => w.name === "num_foregrounds")?.value ?? 1;
  for (let k = 1; k <= MAX_FOREGROUNDS; k++) {
    const box = node.widgets?.find((w) => w.name === `foreground_${k}`);
    if (!box) continue;
    const hide = k > count;
    box.hidden = hide; // the classic canvas
    box.options = { ...(box.options ?? {}), hidden: hide }; // Nodes 2.0 filters widgets on options.hidden
    // ...of the widget's reactive state, which Nodes 2.0 renders from (1.47.12 ignores the two above).
    if (box._state && typeof box._state === "object") box._state.options = { ...(box._state.options ?? {}), hidden: hide };
    if (box.element) box.element.style.display = hide ? "none" : "";
  }
  node.setSize?.([node.size[0], node.computeSize()[1]]);
  node.graph?.setDirtyCanvas?.(true, true);
  document.documentElement.dataset.layert2vPromptBoxes = String(count);
}

const CHECKERBOARD = "repeating-conic-gradient(#bbb 0% 25%, #eee 0% 50%) 50% / 16px 16px";
const TILE_NAMES = { full: "full video", recomposite: "recomposite (bg + fgs)" };

function el(tag, style, props = {}) {
  const node = Object.assign(document.createElement(tag), props);
  if (style) node.style.cssText = style;
  return node;
}

// One viewer per Save Layers node; show() swaps in the strips of a new generation.
class LayerViewer {
  constructor() {
    this.root = el("div", "display:flex;flex-direction:column;gap:6px;width:100%;font:12px sans-serif;color:#ddd;", {
      className: "layert2v-viewer",
    });
    this.root.dataset.state = "empty";
    this.frame = 0;
    this.playing = true;
    this.showMatte = false;
    this.tiles = [];
    this.raf = null;
  }

  show(entries) {
    const strips = entries.filter((e) => e.kind !== "matte");
    const mattes = new Map(entries.filter((e) => e.kind === "matte").map((e) => [e.layer, e]));
    this.frames = Math.min(...strips.map((s) => s.frames));
    this.fps = strips[0]?.fps || 16;
    this.frame = 0;
    this.started = performance.now();
    this.tiles = strips.map((strip) => this.makeTile(strip, mattes.get(strip.layer)));
    this.root.replaceChildren(this.makeControls(), this.makeGrid());
    this.root.dataset.state = "loading";
    const images = this.tiles.flatMap((t) => [t.image, t.matte].filter(Boolean));
    const shown = this.tiles; // a newer generation may arrive before these have decoded
    Promise.all(images.map((img) => img.decode())).then(
      () => { if (shown === this.tiles) { this.root.dataset.state = "ready"; this.draw(); } },
      (error) => {
        if (shown !== this.tiles) return;
        this.root.dataset.state = "error";
        console.error("LayerT2V viewer: a preview did not load", error);
      },
    );
    if (!this.raf) this.tick();
  }

  makeTile(strip, matte) {
    const load = (entry) => el("img", "display:none", { src: viewUrl(entry), className: "layert2v-strip" });
    // Mattes are opaque grey, so the checkerboard shows only behind a foreground's own transparency.
    const canvas = el("canvas", "width:100%;image-rendering:pixelated;display:block;" +
      (strip.kind === "foreground" ? `background:${CHECKERBOARD};` : "background:#000;"), {
      width: strip.frame_width, height: strip.frame_height,
    });
    canvas.dataset.layer = strip.layer;
    return { strip, image: load(strip), matte: matte ? load(matte) : null, canvas };
  }

  makeControls() {
    const bar = el("div", "display:flex;align-items:center;gap:6px;");
    this.playButton = el("button", "min-width:56px;", { className: "layert2v-play", textContent: "Pause" });
    this.playButton.onclick = () => this.setPlaying(!this.playing);
    this.scrubber = el("input", "flex:1;min-width:60px;", {
      type: "range", min: 0, max: this.frames - 1, value: 0, className: "layert2v-scrubber",
    });
    this.scrubber.oninput = () => { this.setPlaying(false); this.seek(Number(this.scrubber.value)); };
    this.counter = el("span", "min-width:64px;text-align:right;font-variant-numeric:tabular-nums;");
    const matteBox = el("input", "", { type: "checkbox", className: "layert2v-matte-toggle" });
    matteBox.onchange = () => { this.showMatte = matteBox.checked; this.draw(); };
    const matteLabel = el("label", "display:flex;align-items:center;gap:2px;white-space:nowrap;");
    matteLabel.append(matteBox, "alpha matte");
    bar.append(this.playButton, this.scrubber, this.counter, matteLabel);
    return bar;
  }

  makeGrid() {
    const grid = el("div", "display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:6px;");
    for (const tile of this.tiles) {
      const cell = el("figure", "margin:0;display:flex;flex-direction:column;gap:2px;");
      const name = TILE_NAMES[tile.strip.layer] ?? tile.strip.layer.replace("_", " ");
      cell.append(el("figcaption", "opacity:.8;", { textContent: name }), tile.canvas, tile.image);
      if (tile.matte) cell.append(tile.matte);
      grid.append(cell);
    }
    return grid;
  }

  setPlaying(playing) {
    this.playing = playing;
    this.playButton.textContent = playing ? "Pause" : "Play";
    this.started = performance.now() - (this.frame * 1000) / this.fps; // resume from the shown frame
  }

  seek(frame) {
    this.frame = Math.max(0, Math.min(this.frames - 1, frame));
    this.draw();
  }

  tick() {
    this.raf = requestAnimationFrame(() => this.tick());
    if (!this.playing || !this.frames || this.root.dataset.state !== "ready") return;
    const frame = Math.floor(((performance.now() - this.started) * this.fps) / 1000) % this.frames;
    if (frame !== this.frame) this.seek(frame);
  }

  draw() {
    if (this.root.dataset.state !== "ready") return;
    for (const { strip, image, matte, canvas } of this.tiles) {
      const source = this.showMatte && matte ? matte : image;
      const x = (this.frame % strip.columns) * strip.frame_width;
      const y = Math.floor(this.frame / strip.columns) * strip.frame_height;
      const context = canvas.getContext("2d");
      context.clearRect(0, 0, canvas.width, canvas.height);
      context.drawImage(source, x, y, strip.frame_width, strip.frame_height, 0, 0, canvas.width, canvas.height);
    }
    this.scrubber.value = String(this.frame);
    this.counter.textContent = `${this.frame + 1} / ${this.frames}`;
    this.root.dataset.frame = String(this.frame);
    this.root.dataset.matte = String(this.showMatte);
    this.root.dataset.fps = String(this.fps);
  }

  heightFor(width) {
    const rows = Math.ceil(this.tiles.length / 2);
    const aspect = this.tiles[0] ? this.tiles[0].strip.frame_height / this.tiles[0].strip.frame_width : 1;
    return 40 + rows * ((width - 30) / 2 * aspect + 24);
  }
}

function viewUrl(entry) {
  const query = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder, type: entry.type });
  return api.apiURL(`/view?${query}`);
}

function showLayerViewer(node, entries) {
  const generation = JSON.stringify(entries);
  // The same generation again (its outputs restored while it still shows): keep its frame and state.
  if (node.layerViewer?.generation === generation && node.layerViewer.root.dataset.state !== "error") return;
  if (!node.layerViewer) {
    node.layerViewer = new LayerViewer();
    node.addDOMWidget?.("layer_viewer", "layert2v_viewer", node.layerViewer.root, {
      serialize: false,
      getMinHeight: () => node.layerViewer.heightFor(Math.max(node.size[0], 360)),
    });
  }
  node.layerViewer.generation = generation;
  node.layerViewer.show(entries);
  node.setSize?.([Math.max(node.size[0], 360), node.computeSize()[1]]);
  node.graph?.setDirtyCanvas?.(true, true);
  document.documentElement.dataset.layert2vViewerLayers = entries.filter((e) => e.kind !== "matte").map((e) => e.layer).join(",");
}

// The frontend keys app.nodeOutputs by node locator: "<node id>" in the root graph, "<subgraph uuid>:<node id>"
// inside a subgraph.
function nodeAtLocator(locator) {
  const root = app.rootGraph ?? app.graph;
  const [graphId, nodeId] = String(locator).includes(":") ? String(locator).split(":") : [null, String(locator)];
  const graph = graphId ? root?.subgraphs?.get(graphId) : root;
  return graph?.getNodeById(nodeId) ?? null;
}

app.registerExtension({
  name: "LayerT2V.UI",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith("LayerT2V")) return;
    seenNodes.push(nodeData.name);

    if (nodeData.name === "LayerT2VPrompts") {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        const count = this.widgets?.find((w) => w.name === "num_foregrounds");
        if (count) {
          const original = count.callback;
          count.callback = (...args) => { original?.apply(count, args); showForegroundBoxes(this); };
        }
        queueMicrotask(() => showForegroundBoxes(this));
        return result;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = onConfigure?.apply(this, arguments);
        showForegroundBoxes(this);
        return result;
      };
    }

    if (nodeData.name === SAVE_LAYERS) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const entries = message?.[VIEWER_OUTPUT] ?? [];
        if (entries.length) showLayerViewer(this, entries);
      };
    }
  },
  // Called with every output the frontend holds whenever it replaces them all (a tab switch restores the
  // tab's outputs after its graph is rebuilt, so onExecuted does not run again).
  onNodeOutputsUpdated(outputs) {
    for (const [locator, output] of Object.entries(outputs ?? {})) {
      const entries = output?.[VIEWER_OUTPUT] ?? [];
      const node = entries.length ? nodeAtLocator(locator) : null;
      if (node?.type === SAVE_LAYERS) showLayerViewer(node, entries);
    }
  },
  async setup() {
    window.__LAYERT2V_LOADED__ = true;
    document.documentElement.dataset.layert2vLoaded = "true";
    document.documentElement.dataset.layert2vNodes = seenNodes.join(",");
    console.log(`LayerT2V extension loaded (nodes: ${seenNodes.join(", ")})`);
  },
});
