"""Outside formats: Hugging Face model directories in and out (`jaxbig import`, `jaxbig
export`), one name map per model family.

    hf.py        import_dir / export_run: config.json + safetensors <-> a jaxbig workdir
    decoders.py  GPT-2 and the Llama family (Llama, Mistral, Qwen2) <-> jaxbig's GPT
    tensors.py   reading / writing (sharded) safetensors without torch

A new family is a name map (config fields both ways, tensor names and reshapes both ways).
"""
