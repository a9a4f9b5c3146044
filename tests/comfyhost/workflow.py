"""UI-format workflow (what a user drags in) -> API form (what /prompt takes), using /object_info.

Widget values are matched to a node's widget inputs in schema order, as the frontend does; a seed
with control_after_generate carries one extra value. A workflow whose values do not fit the live
schema fails here, so the shipped files cannot silently drift from the nodes.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = []
    for section in ("required", "optional"):
        declared = info["input"].get(section, {})
        for name in order.get(section, list(declared)):
            specs.append((name, declared[name]))
    return specs


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_names(info: dict) -> list[str]:
    """A node's widget inputs in the order its widgets_values hold them (a seed's control not counted)."""
    return [name for name, spec in _input_specs(info) if _is_widget(spec)]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node {node['id']}: type {node['type']!r} is not known to the server")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, spec in _input_specs(info):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
            elif _is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value left for {name!r}")
                inputs[name] = values.pop(0)
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if options.get("control_after_generate"):
                    values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget value(s) left over: {values}")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
