"""A health check: proves the pack loaded and can execute, with no model needed."""

from comfy_api.latest import io, ui

from .types import CATEGORY


class LayerT2VPing(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerT2VPing",
            display_name="LayerT2V Ping",
            category=CATEGORY,
            description="Shows its message in the node. A health check for the LayerT2V pack.",
            inputs=[io.String.Input("message", default="pong")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, message: str) -> io.NodeOutput:
        return io.NodeOutput(ui=ui.PreviewText(message))
