"""Stage 3: extend a stage-2 model to K foregrounds and continue on multi-subject samples.

    python -m training.stage3_multi_fg --config training/configs/stage3_cpu_tiny.yaml
    accelerate launch --multi_gpu --num_processes 8 -m training.stage3_multi_fg --config training/configs/stage3_wan1.3b.yaml

`model.init_adapter` is the stage-2 adapter (max_foregrounds 1); `model.layert2v.max_foregrounds` is
the new K. The LayerAdaLN table grows from 2 + 2*K_old to 2 + 2*K rows: trained rows are copied,
each new foreground_k / mask_k row starts as the trained foreground_1 / mask_1 row. LoRA, mask
adapter and losses carry over from stage 2; batches are bucketed by foreground count.
"""

from __future__ import annotations

import torch

from layert2v_core.weights.layert2v_adapter import load_layert2v_adapter
from layert2v_core.layout import segment_names
from layert2v_core.model_geometry import trained_vae_strides, vae_strides

from .stage2_joint import JointTask
from .stage_common import run_stage

STAGE = "multi_fg"


def extend_layer_adaln(dit, trained_foregrounds: int) -> list[str]:
    """Initialise rows of foregrounds > trained_foregrounds from foreground_1 / mask_1; returns their names."""
    k_new = dit.config.max_foregrounds
    if trained_foregrounds >= k_new:
        return []
    position = {name: row for row, name in enumerate(segment_names(k_new))}  # a segment's LayerAdaLN row
    rows = dit.layer_adaln
    filled = []
    with torch.no_grad():
        for k in range(trained_foregrounds + 1, k_new + 1):
            for kind in ("foreground", "mask"):
                src, dst = position[f"{kind}_1"], position[f"{kind}_{k}"]
                rows[dst].copy_(rows[src])
                filled.append(f"{kind}_{k}")
    return filled


class MultiForegroundTask(JointTask):
    stage = STAGE

    def load_previous_stage(self) -> None:
        folder = self.config.model.init_adapter
        if not folder:
            raise ValueError("stage 3 needs model.init_adapter: the stage-2 adapter folder to extend")
        previous = load_layert2v_adapter(folder)
        if previous.config.routing != self.layert2v.routing:
            raise ValueError(f"routing {self.layert2v.routing!r} differs from the stage-2 adapter's "
                             f"{previous.config.routing!r}; keep the preset the model was trained with")
        trained = trained_vae_strides(previous.config)
        if trained is not None and trained != vae_strides(self.vae):
            raise ValueError(f"the stage-2 adapter {folder!r} was trained with a VAE of strides {trained}, this run's VAE "
                             f"has {vae_strides(self.vae)}; use the VAE stage 2 used (model.vae_path / architecture)")
        self.dit.load_adapter_state_dict(previous.dit_state)     # rows beyond the old table stay zero ...
        self.mask_vae.load_mask_adapter_state_dict(previous.mask_state)
        self.new_rows = extend_layer_adaln(self.dit, previous.config.max_foregrounds)  # ... then copied


def main(argv=None):
    return run_stage(MultiForegroundTask, STAGE, __doc__, argv)


if __name__ == "__main__":
    main()
