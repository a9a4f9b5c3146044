// TEMPORARY frontend extension: leaves markers that the headless browser test reads, proving that
// ComfyUI served and ran the pack's JS and that the frontend registered the pack's nodes.
// The layer viewer replaces it.
import { app } from "../../scripts/app.js";

const seenNodes = [];

app.registerExtension({
  name: "LayerT2V.Marker",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.category?.startsWith("LayerT2V")) seenNodes.push(nodeData.name);
  },
  async setup() {
    window.__LAYERT2V_LOADED__ = true;
    document.documentElement.dataset.layert2vLoaded = "true";
    document.documentElement.dataset.layert2vNodes = seenNodes.join(",");
    console.log(`LayerT2V extension loaded (nodes: ${seenNodes.join(", ")})`);
  },
});
