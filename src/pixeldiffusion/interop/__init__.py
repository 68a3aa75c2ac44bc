"""Models in and out of pixeldiffusion: the diffusers folder format (`diffusers`), any source opened as one model
(`pretrained`), the Hugging Face Hub (`hub`) and a run pushed to it (`push`). Nothing here imports diffusers or
huggingface_hub at import time: a diffusers folder is read and written as JSON plus safetensors, and the Hub client
is imported when first used."""
