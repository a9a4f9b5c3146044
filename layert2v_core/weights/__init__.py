"""Every weight format LayerT2V reads or writes, one module per format (no imports here, so any
module can be imported alone and no cycle can form):

    files.py             safetensors headers, weights-only pickles, atomic writes, the error types
    header_schema.py     typed bounds on every config read from a file, checked before anything is built
    wan_keys.py          Wan2.1 tensor names: what a file holds, original <-> diffusers names
    wan_single_file.py   Wan2.1 DiT / VAE from ComfyUI single files or diffusers folders, built in the target dtype
    layert2v_adapter.py  our adapter: layert2v_config.json + dit_adapter / mask_adapter safetensors, or one file
    authors_folder.py    the LayerT2V authors' training output (PEFT adapter, mask_vae_lora.pt)
    ema.py               the authors' EMA file (diffusers EMAModel.state_dict(), shadow_params by position)
    checkpoint.py        any adapter path -> LayerT2VAdapter (detects which of the two formats)
    loading.py           files on disk -> ready models, for the CLI, the nodes and training eval
"""
