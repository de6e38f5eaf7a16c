"""A GGUF file (llama.cpp's format, how many LLMs are released) -> a plain local HF directory rtune
can train: dequantised fp32 weights in safetensors, the tokenizer with its chat template, and a
lineage.json naming the GGUF file by sha256 and quantisation type.

transformers reads GGUF (with the `gguf` package) but marks the model it builds as quantised and
refuses to save it, so the weights are moved into a plain model of the same config first."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from rtune_ds.errors import ConfigError
from rtune_ds.files import sha256_file
from rtune_ds.io import save_json, staged_dir


def gguf_header(file: Path) -> dict:
    """What the GGUF file says of itself (architecture, name, quantisation type); no tensor is
    read. A file that is not GGUF, or of an architecture transformers cannot load, is refused."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if not file.is_file():
        raise ConfigError(f"{file}: no such GGUF file")
    try:
        fields = gguf.GGUFReader(str(file)).fields
    except (ValueError, OSError, IndexError) as err:
        raise ConfigError(f"{file}: not a GGUF file ({' '.join(str(err).split())[:200]})") from None

    def field(key: str):
        return fields[key].contents() if key in fields else None

    architecture = field("general.architecture")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{file}: key 'general.architecture': '{architecture}' is not one "
                          "transformers can load from GGUF")
    file_type = field("general.file_type")
    return {"architecture": architecture, "name": field("general.name"),
            "quantization": (gguf.LlamaFileType(file_type).name if file_type is not None
                             else "unknown (no general.file_type)")}


def import_gguf(file: str | Path, out: str | Path) -> Path:
    """Write the HF directory of the GGUF `file` to `out` (whole or not at all); refuses an `out`
    that exists."""
    file, out = Path(file).resolve(), Path(out)
    if out.exists():
        raise ConfigError(f"--out {out}: exists; the import writes a new directory")
    header = gguf_header(file)
    with staged_dir(out) as tmp:
        write_hf_dir(file, tmp, header)
    return out


def write_hf_dir(file: Path, dest: Path, header: dict) -> None:
    """Fill the empty directory `dest` with the HF directory of the GGUF `file`, whose
    `gguf_header` is `header`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rtune_ds.artifacts.lineage import lineage_record
    from rtune_ds.data.tokenizer import load_tokenizer, pad_record

    # alone in a directory: a tokenizer.json beside the GGUF would be read instead of the GGUF's
    # own tokenizer, silently without its special tokens and chat template
    with tempfile.TemporaryDirectory() as alone:
        (Path(alone) / file.name).symlink_to(file)
        try:
            config = AutoConfig.from_pretrained(alone, gguf_file=file.name)
            loaded = AutoModelForCausalLM.from_pretrained(alone, gguf_file=file.name,
                                                          dtype=torch.float32)
            tokenizer = load_tokenizer(alone, gguf_file=file.name)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{file}: transformers cannot read it ({err})") from None
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    save_json(lineage_record(
        "import-gguf", {}, None, [], 0, 0,
        {"kind": "base", "gguf": {"file": file.name, "sha256": sha256_file(file), **header},
         "dtype": "float32 (dequantised)", "pad": pad_record(tokenizer),
         "chat_template": bool(tokenizer.chat_template)}), dest / "lineage.json")
