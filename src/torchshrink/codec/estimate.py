"""What one layer costs in the artifact, without writing the whole file.

The planner prices many variants of each layer; coding the whole model for each would repeat
the work on every other layer. `layer_bytes` codes only the tensors of one layer, exactly as
`encode_model` codes them (the canonical form of a parametrization chain, the same hints and
the same smallest bit-exact encoding, entropy coders included), and adds the manifest text
those tensors, the layer's module specs and its parametrization chains take. The sum over
layers plus what the rest of the model costs is the file size up to a few bytes of JSON
punctuation; the planner checks it against a real save.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from torchshrink.codec import structure
from torchshrink.codec.encodings import dtype_code, encodings
from torchshrink.codec.fileformat import dumps
from torchshrink.codec.model_encode import (
    _canonical_originals,
    _hint_for,
    encode_tensor,
    module_codec,
    normalized,
)

__all__ = ["layer_bytes"]


def _under(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def layer_bytes(model: nn.Module, layer: str, *, verify: bool = False) -> int:
    """Artifact bytes spent on the tensors and structure records of `model.<layer>` (and its
    children): coded payload plus manifest rows, as `ts.save` would write them. verify=True
    also decodes each candidate encoding as the writer does (exact, about twice as slow)."""
    state = model.state_dict(keep_vars=True)
    keys = [k for k in state if k.startswith(layer + ".")]
    canon = _canonical_originals(model.get_submodule(layer))
    canon = {f"{layer}.{k}": v for k, v in canon.items()}
    modules = dict(model.named_modules())
    total = 0
    candidates = encodings()
    for key in keys:
        t = canon.get(key, state[key]).detach().to("cpu").contiguous()
        enc, payload, meta = encode_tensor(key, t, _hint_for(key, t, modules), candidates, verify=verify)
        size = len(payload) if isinstance(payload, bytes) else payload.nbytes
        row: list[object] = [key, enc, list(t.shape), dtype_code(t.dtype), size]
        if meta:
            row.append(meta)
        total += size + len(dumps(row)) + 1
    for name, m in modules.items():
        if not _under(name, layer) or "parametrizations" in name.split("."):
            continue
        codec = module_codec(m)
        if codec is not None and type(m) not in (nn.Linear, nn.Conv1d, nn.Conv2d):
            # a swapped or rebuilt module is recorded by spec; the plain layer the skeleton
            # already has is not
            total += len(dumps([codec.name, normalized(codec.to_spec(m))])) + len(dumps(name)) + 4
        if parametrize.is_parametrized(m):
            for tensor_name, plist in m.parametrizations.items():
                chain = []
                for p in plist:
                    pc = structure.parametrization_codec(p)
                    if pc is not None:
                        chain.append([pc.name, normalized(pc.to_spec(p))])
                total += len(dumps(chain)) + len(dumps(f"{name}.{tensor_name}")) + 2
    return total
