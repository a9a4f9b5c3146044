"""LayeredWanTransformer: diffusers' Wan2.1 DiT run over a temporally serialized multi-layer latent.

Three additions over the vanilla forward, all driven by a LayerLayout:
- LayerAdaLN: one learnable (6, d) row per segment position, shared by all blocks, zero-initialised,
  added to that segment's timestep modulation. Modulation stays per segment, broadcast over the
  segment's tokens: never a per-token (S, 6, d) table.
- Routed cross-attention: each group of segments attends only to the prompt slots it may see,
  computed group by group (no dense mask), so flash/SDPA kernels stay usable.
- Per-segment timesteps: a given (clean) segment can sit at t=0 while the others are noisy.
The block weights are the base model's own; this module only re-orders how they are called.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch.utils.checkpoint import checkpoint

from .config import LayerT2VConfig
from .layout import LayerLayout, LayoutError

LORA_ADAPTER_NAME = "layert2v"
LAYER_ADALN_KEY = "layer_adaln"


class LayeredWanTransformer(nn.Module):
    def __init__(self, base: WanTransformer3DModel, config: LayerT2VConfig):
        super().__init__()
        self.base = base
        self.config = config
        dim = base.config.num_attention_heads * base.config.attention_head_dim
        # Created here (not inside the diffusers class) so from_pretrained never leaves it on meta.
        self.layer_adaln = nn.Parameter(torch.zeros(config.adaln_rows, 6, dim, device=base.device, dtype=torch.float32))
        self.gradient_checkpointing = False
        for block in base.blocks:
            if type(block) is WanTransformerBlock:
                block.__class__ = LayeredWanBlock  # same weights and keys; a forward that knows layouts

    # ---- properties the sampler and nodes ask ---------------------------------------------
    @property
    def inner_dim(self) -> int:
        return self.layer_adaln.shape[-1]

    @property
    def text_dim(self) -> int:
        return self.base.config.text_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def streamable_blocks(self) -> list[nn.Module]:
        """The transformer blocks: each uses only its own weights inside its forward, so a host short of
        device memory may keep some on the CPU and stream them in as they run (offload.py)."""
        return list(self.base.blocks)

    def check_layout(self, layout: LayerLayout) -> None:
        if layout.num_foregrounds > self.config.max_foregrounds:
            raise LayoutError(
                f"num_foregrounds={layout.num_foregrounds} is above what this checkpoint supports "
                f"(max_foregrounds={self.config.max_foregrounds}); use 1..{self.config.max_foregrounds}"
            )
        if tuple(layout.patch_size) != tuple(self.base.config.patch_size):
            raise LayoutError(f"layout patch {layout.patch_size} != model patch {self.base.config.patch_size}")

    # ---- LoRA / adapter --------------------------------------------------------------------
    def add_lora(self) -> None:
        from peft import LoraConfig

        lora = LoraConfig(
            r=self.config.dit_lora_rank,
            lora_alpha=self.config.dit_lora_alpha,
            target_modules=list(self.config.dit_lora_targets),
            init_lora_weights=True,
        )
        self.base.add_adapter(lora, adapter_name=LORA_ADAPTER_NAME)

    @property
    def has_lora(self) -> bool:
        return LORA_ADAPTER_NAME in getattr(self.base, "peft_config", {})

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole tensors; when the model is sharded (FSDP) each is gathered, so every process must call it."""
        sd = {LAYER_ADALN_KEY: _whole(self.layer_adaln.detach())}
        if self.has_lora:
            from peft import get_peft_model_state_dict

            lora = get_peft_model_state_dict(self.base, adapter_name=LORA_ADAPTER_NAME)
            sd.update({f"lora.{k}": _whole(v.detach()) for k, v in lora.items()})
        return sd

    def load_adapter_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        adaln = sd.get(LAYER_ADALN_KEY)
        if adaln is None:
            raise KeyError(f"adapter has no {LAYER_ADALN_KEY!r} tensor")
        rows, six, dim = adaln.shape
        if six != 6 or dim != self.inner_dim or rows > self.config.adaln_rows:
            raise ValueError(
                f"{LAYER_ADALN_KEY} has shape {tuple(adaln.shape)}; this model expects "
                f"(<= {self.config.adaln_rows}, 6, {self.inner_dim})"
            )
        with torch.no_grad():
            self.layer_adaln[:rows].copy_(adaln.to(self.layer_adaln))
        lora = {k[len("lora."):]: v for k, v in sd.items() if k.startswith("lora.")}
        if lora:
            from peft import set_peft_model_state_dict

            if not self.has_lora:
                self.add_lora()
            result = set_peft_model_state_dict(self.base, lora, adapter_name=LORA_ADAPTER_NAME)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"adapter LoRA has keys this model does not know: {unexpected[:5]} ...")

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [self.layer_adaln]
        params += [p for n, p in self.base.named_parameters() if "lora_" in n]
        return params

    # ---- forward ---------------------------------------------------------------------------
    def rotary_embedding(self, latent: torch.Tensor, layout: LayerLayout):
        if self.config.rope_mode == "continuous":
            return self.base.rope(latent)
        one_segment = latent[:, :, : layout.latent_frames]
        cos, sin = self.base.rope(one_segment)
        return cos.repeat(1, layout.num_segments, 1, 1), sin.repeat(1, layout.num_segments, 1, 1)

    def forward(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        layout: LayerLayout,
        blocks=None,
        after_block=None,
    ) -> torch.Tensor:
        """Velocity for a serialized latent.

        latent:   (B, C, L*T', h, w) in the layout's segment order.
        timestep: (B,) one timestep for all segments, or (B, L) one per segment (0..1000).
        context:  (B, P, text_len, text_dim) text embeddings, P prompt slots in layout.prompt_names order.
        blocks:   optional stand-in for the block stack, called as blocks(self, tokens, modulation,
                  segments, run_blocks): a step cache (step_cache.py) may reuse an earlier residual.
        after_block: optional callable, called with no arguments after every block: it may raise to
                  cancel (a host's interrupt check), so a cancel waits for one block, not one forward.
        """
        base = self.base
        batch = latent.shape[0]
        segments = layout.num_segments
        if latent.shape[2] != segments * layout.latent_frames:
            raise LayoutError(
                f"latent has {latent.shape[2]} latent frames; layout needs {segments * layout.latent_frames}"
            )
        if tuple(latent.shape[3:]) != (layout.latent_height, layout.latent_width):
            raise LayoutError(  # e.g. encoded by a VAE of another stride than the layout's
                f"latent is {latent.shape[4]}x{latent.shape[3]} latent pixels; the layout ({layout.width}x"
                f"{layout.height} at VAE stride {layout.space_stride}) needs {layout.latent_width}x{layout.latent_height}"
            )
        if context.ndim != 4 or context.shape[1] != len(layout.prompt_names):
            raise LayoutError(
                f"context must be (B, {len(layout.prompt_names)} prompt slots, text_len, dim); got {tuple(context.shape)}"
            )
        p_t, p_h, p_w = base.config.patch_size
        frames, height, width = latent.shape[2] // p_t, latent.shape[3] // p_h, latent.shape[4] // p_w

        rotary = self.rotary_embedding(latent, layout)
        tokens = base.patch_embedding(latent).flatten(2).transpose(1, 2).contiguous()

        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(batch, segments)
        prompts, text_len = context.shape[1], context.shape[2]
        temb, modulation, text, _ = base.condition_embedder(timestep.reshape(-1), context.flatten(1, 2))
        temb = temb.view(batch, segments, 1, -1)                                     # (B, L, 1, d)
        modulation = modulation.view(batch, segments, 6, -1).float() + self.layer_adaln[:segments].float()
        text = text.view(batch, prompts, text_len, -1)

        routes = self._routes(layout, context.device, self._prompt_lengths(context))
        if blocks is None:
            tokens = self._run_blocks(tokens, text, modulation, rotary, routes, segments, after_block)
        else:
            tokens = blocks(self, tokens, modulation, segments,
                            lambda x: self._run_blocks(x, text, modulation, rotary, routes, segments, after_block))

        shift, scale = (base.scale_shift_table.float() + temb.float()).chunk(2, dim=2)  # (B, L, 1, d)
        normed = base.norm_out(tokens.float()).view(batch, segments, -1, tokens.shape[-1])
        tokens = (normed * (1 + scale) + shift).flatten(1, 2).type_as(tokens)
        tokens = base.proj_out(tokens)

        tokens = tokens.reshape(batch, frames, height, width, p_t, p_h, p_w, -1)
        return tokens.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _run_blocks(self, tokens, text, modulation, rotary, routes, segments, after_block=None):
        for block in self.base.blocks:
            # Through the block's own forward: an FSDP or checkpoint wrapper around it sees every weight used.
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = checkpoint(block, tokens, text, modulation, rotary, routes, segments, use_reentrant=False)
            else:
                tokens = block(tokens, text, modulation, rotary, routes, segments)
            if after_block is not None:
                after_block()
        return tokens

    def _prompt_lengths(self, context: torch.Tensor) -> tuple[list[list[int]], int] | None:
        """((B, P) real-token counts, text_len) when padding is masked (config.text_padding), else None.
        Encoders pad each prompt with zero rows after its last token, so the count is read off the context."""
        if self.config.text_padding != "mask":
            return None
        real = context.detach().abs().amax(-1) > 0                                   # (B, P, n)
        positions = torch.arange(1, real.shape[-1] + 1, device=context.device)
        return (real * positions).amax(-1).clamp(min=1).tolist(), real.shape[-1]

    @staticmethod
    def _routes(layout: LayerLayout, device, lengths=None) -> list[tuple]:
        """Per routing group: (segment positions or None for all, prompt indices or None for all), and
        with masked padding a third entry: the real-token rows of the visible prompts (see _attend)."""
        names = layout.prompt_names
        routes = []
        for visible, group in layout.routing_groups():
            seg_idx = None if len(group) == layout.num_segments else torch.tensor([s.position for s in group], device=device)
            txt_idx = None if len(visible) == len(names) else torch.tensor([names.index(p) for p in visible], device=device)
            if lengths is None:
                routes.append((seg_idx, txt_idx))
            else:
                routes.append((seg_idx, txt_idx, _real_rows([names.index(p) for p in visible], *lengths, device)))
        return routes

    @staticmethod
    def _block(block, tokens, text, modulation, rotary, routes, segments):
        """One WanTransformerBlock with per-segment modulation and routed cross-attention."""
        batch, seq, dim = tokens.shape
        mod = (block.scale_shift_table.float() + modulation).chunk(6, dim=2)     # 6 x (B, L, 1, d)
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mod

        def per_segment(x):  # (B, S, d) -> (B, L, S/L, d): broadcast the modulation, no per-token table
            return x.view(batch, segments, seq // segments, dim)

        normed = (per_segment(block.norm1(tokens.float())) * (1 + scale_msa) + shift_msa).flatten(1, 2)
        attn = block.attn1(normed.type_as(tokens), None, None, rotary)
        tokens = (tokens.float() + (per_segment(attn) * gate_msa).flatten(1, 2)).type_as(tokens)

        normed = block.norm2(tokens.float()).type_as(tokens)
        tokens = tokens + _routed_cross_attention(block.attn2, normed, text, routes, segments)

        normed = (per_segment(block.norm3(tokens.float())) * (1 + c_scale) + c_shift).flatten(1, 2)
        ff = block.ffn(normed.type_as(tokens))
        return (tokens.float() + (per_segment(ff.float()) * c_gate).flatten(1, 2)).type_as(tokens)


class LayeredWanBlock(WanTransformerBlock):
    """A WanTransformerBlock whose own forward runs the layered step (per-segment modulation, routed
    cross-attention) when given `segments`; without it, the vanilla block. Sharding (FSDP) and
    activation-checkpoint wrappers act on a block's forward, so the layered step must live here."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, routes=None, segments=None):
        if segments is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        return LayeredWanTransformer._block(self, hidden_states, encoder_hidden_states, temb, rotary_emb,
                                            routes, segments)


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # a DTensor shard (FSDP): all-gather it


def _routed_cross_attention(attn, queries, text, routes, segments):
    """queries (B, S, d) in segment order; text (B, P, n, d); each group sees only its prompt slots."""
    batch, seq, dim = queries.shape
    if len(routes) == 1 and routes[0] == (None, None):
        return attn(queries, text.flatten(1, 2), None, None)
    per_seg = queries.view(batch, segments, seq // segments, dim)
    out = torch.empty_like(per_seg)
    for seg_idx, txt_idx, *real_rows in routes:
        q = per_seg if seg_idx is None else per_seg.index_select(1, seg_idx)
        ctx = text if txt_idx is None else text.index_select(1, txt_idx)
        res = _attend(attn, q.flatten(1, 2), ctx.flatten(1, 2), real_rows[0] if real_rows else None).view_as(q)
        if seg_idx is None:
            return res.flatten(1, 2)
        out = out.index_copy(1, seg_idx, res)
    return out.flatten(1, 2)


def _real_rows(slots: list[int], lengths: list[list[int]], text_len: int, device):
    """Rows of the visible prompts' flattened (len(slots) * text_len) context that hold real tokens:
    one index tensor when every batch element has the same prompt lengths, else one per element."""
    def rows(per_slot):
        return torch.cat([j * text_len + torch.arange(per_slot[p], device=device) for j, p in enumerate(slots)])

    if all(row == lengths[0] for row in lengths):
        return rows(lengths[0])
    return [rows(row) for row in lengths]


def _attend(attn, queries, ctx, real_rows):
    """Cross-attention to the real tokens only ("mask padding"): the padding rows are cut out rather than
    masked, so no attention mask reaches the kernel and flash/SDPA backends stay usable."""
    if real_rows is None:
        return attn(queries, ctx, None, None)
    if torch.is_tensor(real_rows):
        return attn(queries, ctx.index_select(1, real_rows), None, None)
    return torch.cat([attn(queries[b:b + 1], ctx[b:b + 1].index_select(1, rows), None, None)
                      for b, rows in enumerate(real_rows)])
