"""Weight placement (layert2v_core/offload.py): what a host's byte budget puts on the device, what streams,
and that the model computes the same in every placement. On this CPU-only machine the compute and offload
devices are both the CPU, so moves are no-ops: bench/gpu_comfy_memory.py measures real transfers."""

import pytest
import torch

from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.offload import WeightPlacement, tensor_bytes, unique_tensors
from layert2v_core.sampler import SamplerConfig
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline
from layert2v_core.text import TextEncoder
from layert2v_core.tiny import build_tiny_transformer, save_tiny_text_encoder

LAYOUT = LayerLayout(1, 5, 32, 32)


@pytest.fixture()
def dit():
    torch.manual_seed(0)
    return LayeredWanTransformer(build_tiny_transformer(num_layers=4), LayerT2VConfig(text_len=8)).eval()


def velocity(dit):
    torch.manual_seed(1)
    x = torch.randn(1, 16, LAYOUT.num_segments * LAYOUT.latent_frames, 4, 4)
    with torch.no_grad():
        return dit(x, torch.tensor([500.0]), torch.randn(1, 3, 8, 32), LAYOUT)


def hooked(dit) -> list[int]:
    return [i for i, b in enumerate(dit.streamable_blocks()) if b._forward_pre_hooks or b._forward_hooks]


def test_sizes_cover_every_weight_once(dit):
    placement = WeightPlacement(dit, dit.streamable_blocks())
    assert placement.size == tensor_bytes(unique_tensors(dit)) > 0
    assert len(placement.block_bytes) == 4 and placement.base_bytes > 0
    tied = torch.nn.Module()
    tied.a, tied.b = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    tied.b.weight = tied.a.weight  # UMT5's shared / embed_tokens: one tensor under two names
    assert WeightPlacement(tied).size == 10 * 4 * 4


def test_no_budget_places_everything_and_leaves_no_hook(dit):
    reference = velocity(dit)
    placement = WeightPlacement(dit, dit.streamable_blocks())
    assert placement.place("cpu") == placement.size
    assert (placement.streamed_blocks, placement.streaming_bytes, hooked(dit)) == (0, 0, [])
    assert torch.equal(velocity(dit), reference)


def test_a_budget_keeps_the_base_and_whole_blocks_and_streams_the_rest(dit):
    reference = velocity(dit)
    placement = WeightPlacement(dit, dit.streamable_blocks())
    base, block = placement.base_bytes, max(placement.block_bytes)
    # room for the base, two blocks, and one block streaming in
    assert placement.place("cpu", base + 3 * block) == base + 2 * block
    assert (placement.streamed_blocks, placement.streaming_bytes, hooked(dit)) == (2, block, [2, 3])
    assert torch.equal(velocity(dit), reference)
    # a budget below the base still places the base: the model cannot run without it
    assert placement.place("cpu", 1) == base and hooked(dit) == [0, 1, 2, 3]
    assert torch.equal(velocity(dit), reference)
    # a larger budget adds blocks without touching those already there
    assert placement.place("cpu", base + 2 * block) == base + block and hooked(dit) == [1, 2, 3]
    assert placement.place("cpu", placement.size) == placement.size and hooked(dit) == []


def test_release_streams_resident_blocks_last_first_and_offload_clears_everything(dit):
    placement = WeightPlacement(dit, dit.streamable_blocks())
    block = max(placement.block_bytes)
    placement.place("cpu")
    assert placement.release(block + 1) == 2 * block   # whole blocks only: two to cover block + 1 bytes
    assert hooked(dit) == [2, 3] and placement.loaded_bytes == placement.size - 2 * block
    assert placement.release(10 * placement.size) == 2 * block and placement.loaded_bytes == placement.base_bytes
    assert placement.release(1) == 0                    # the base only leaves with offload
    placement.offload()
    assert (placement.device, placement.loaded_bytes, hooked(dit)) == (None, 0, [])


def test_a_failing_block_gives_its_weights_back(dit):
    reference = velocity(dit)
    placement = WeightPlacement(dit, dit.streamable_blocks())
    placement.place("cpu", 1)
    block = dit.streamable_blocks()[0]
    originals = [t.data_ptr() for t in unique_tensors(block)]
    forward = block.forward

    def cancelled(*args, **kwargs):  # as a Cancel raising inside a block
        raise RuntimeError("cancelled")

    block.forward = cancelled
    with pytest.raises(RuntimeError, match="cancelled"):
        velocity(dit)
    assert [t.data_ptr() for t in unique_tensors(block)] == originals
    block.forward = forward
    assert torch.equal(velocity(dit), reference)


def test_streamed_dit_samples_the_same_latent_with_and_without_the_step_cache(dit):
    """The step cache reads block 0's modulation table outside the block's forward: it must still work
    when that block streams."""
    pipe = LayerT2VPipeline(dit, None, None, memory_check=False)
    cond = LayerConditioning(torch.randn(1, 3, 8, 32), torch.randn(1, 3, 8, 32))
    for threshold in (0.0, 0.5):
        config = SamplerConfig(steps=4, cfg=5.0, sampler="euler", cache_threshold=threshold)
        WeightPlacement(dit, dit.streamable_blocks()).offload()
        reference = pipe.sample_latent(LAYOUT, cond, config)
        placement = WeightPlacement(dit, dit.streamable_blocks())
        placement.place("cpu", 1)
        assert hooked(dit) == [0, 1, 2, 3]
        assert torch.equal(pipe.sample_latent(LAYOUT, cond, config), reference)
        placement.offload()


def test_text_encoder_streams_its_umt5_blocks(tmp_path):
    encoder = TextEncoder.from_folder(save_tiny_text_encoder(tmp_path), text_len=32, dtype=torch.float32, cache_size=0)
    reference = encoder.encode("a red circle moving right")
    blocks = encoder.streamable_blocks()
    assert len(blocks) == 2 and blocks[0] is encoder.model.encoder.block[0]
    placement = WeightPlacement(encoder.model, blocks)
    placement.place("cpu", 1)
    assert placement.streamed_blocks == 2
    assert torch.equal(encoder.encode("a red circle moving right"), reference)
