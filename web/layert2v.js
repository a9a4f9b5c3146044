// LayerT2V frontend extension (plain ES module, served by ComfyUI at /extensions/<pack>/):
// - Layer Prompts: shows only as many foreground prompt boxes as `num_foregrounds` asks for;
// - Save Layers: a layer viewer with one tab per layer (foregrounds over a checkerboard);
// - markers on <html> that the headless-browser test reads.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MAX_FOREGROUNDS = 3;
const seenNodes = [];

function showForegroundBoxes(node) {
  const count = node.widgets?.find((w) => w.name === "num_foregrounds")?.value ?? 1;
  for (let k = 1; k <= MAX_FOREGROUNDS; k++) {
    const box = node.widgets?.find((w) => w.name === `foreground_${k}`);
    if (!box) continue;
    const hide = k > count;
    box.hidden = hide;
    if (box.element) box.element.style.display = hide ? "none" : "";
  }
  node.setSize?.([node.size[0], node.computeSize()[1]]);
  document.documentElement.dataset.layert2vPromptBoxes = String(count);
}

function checkerboard() {
  return "repeating-conic-gradient(#bbb 0% 25%, #eee 0% 50%) 50% / 16px 16px";
}

function buildLayerViewer(node, images) {
  const root = document.createElement("div");
  root.className = "layert2v-viewer";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;";
  const tabs = document.createElement("div");
  tabs.style.cssText = "display:flex;flex-wrap:wrap;gap:2px;";
  const view = document.createElement("img");
  view.style.cssText = "max-width:100%;image-rendering:pixelated;";
  const select = (img, button) => {
    view.src = api.apiURL(`/view?filename=${encodeURIComponent(img.filename)}&subfolder=${encodeURIComponent(img.subfolder)}&type=${img.type}`);
    view.style.background = img.has_alpha ? checkerboard() : "none";
    for (const b of tabs.children) b.style.fontWeight = b === button ? "bold" : "normal";
  };
  images.forEach((img, i) => {
    const button = document.createElement("button");
    button.textContent = img.layer;
    button.onclick = () => select(img, button);
    tabs.appendChild(button);
    if (i === 0) select(img, button);
  });
  root.append(tabs, view);
  return root;
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

    if (nodeData.name === "LayerT2VSaveLayers") {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const images = (message?.images ?? []).filter((img) => img.layer);
        if (!images.length) return;
        this.imgs = []; // the viewer replaces the default image preview
        const old = this.widgets?.find((w) => w.name === "layer_viewer");
        if (old) old.element.replaceChildren(buildLayerViewer(this, images));
        else this.addDOMWidget?.("layer_viewer", "layert2v_viewer", buildLayerViewer(this, images), { serialize: false });
        document.documentElement.dataset.layert2vViewerLayers = images.map((i) => i.layer).join(",");
      };
    }
  },
  async setup() {
    window.__LAYERT2V_LOADED__ = true;
    document.documentElement.dataset.layert2vLoaded = "true";
    document.documentElement.dataset.layert2vNodes = seenNodes.join(",");
    console.log(`LayerT2V extension loaded (nodes: ${seenNodes.join(", ")})`);
  },
});
