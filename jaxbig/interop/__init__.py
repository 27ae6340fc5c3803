"""Outside formats: Hugging Face model directories in and out (`jaxbig import`, `jaxbig
export`), one name map per model family.

    hf.py        import_dir / export_run: config.json + safetensors <-> a jaxbig workdir
    decoders.py  the decoder families (family.py; gpt2.py, llama.py, ...) <-> jaxbig's GPT
    vision.py    ViTModel / ViTForImageClassification <-> jaxbig's vit (bare, or a
                 classifier on a vit backbone); the encoder import / export loops
    clip.py      CLIPModel <-> jaxbig's two_tower (vit image tower, causal text_encoder)
    tensors.py   reading / writing (sharded) safetensors without torch

A new family is a name map (config fields both ways, tensor names and reshapes both ways).
"""
