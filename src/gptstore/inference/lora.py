"""LoRA adapters served on a shared base: loading PEFT folders, per-row application.

A PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`, as
`PeftModel.save_pretrained` writes it) becomes a `LoraAdapter`: for each projection
*site* of the hand-written decoder (a fused `qkv`, `o`, fused `gate_up`, `down`, the
LM head) the `A [r, in]` and `B [out, r]` of its target modules, with the scaling
folded into `B`. Several PEFT target modules that the decoder fuses into one matmul
(q/k/v, gate/up) share one `x @ A^T` (their `A`s stacked); each `B` then writes its own
columns of the fused output. (A block-diagonal `B` would be one matmul fewer but holds
3x the bytes of q/k/v's `B`s: 20 fp32 adapters cost 1.41x their files that way.)

The base weights are never touched. A batch mixing adapters applies, per site, the
delta `(x_g @ A^T) @ B^T` of each adapter to the rows `g` that asked for it
(`LoraBatch`); rows with no adapter get nothing. Rows of one adapter that sit together
are a slice (a view, added in place); scattered rows go through index_select /
index_add_.

Knows nothing of where adapters are stored or which model names they belong to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gptstore.errors import InvalidRequest


@dataclass(frozen=True)
class SiteTarget:
    """Where a PEFT target module lands in the hand-written decoder."""

    layer: int  # -1 for sites outside the layer stack (the LM head)
    site: str  # "qkv", "o", "gate_up", "down", "lm_head", ...
    offset: int  # first output column of this module inside the (fused) site
    width: int  # output columns of this module
    total: int  # output columns of the whole site


@dataclass
class LoraBlock:
    """One target module's `B` inside a (fused) site."""

    offset: int  # first output column of the site that it writes
    r0: int  # its columns of the site's stacked `x @ A^T`: [r0, r0 + B.shape[1])
    B: torch.Tensor  # [width, r], scaling folded in


@dataclass
class LoraSite:
    A: torch.Tensor  # [r_total, in]: the As of the site's target modules, stacked
    blocks: list[LoraBlock]  # one per target module
    bias: torch.Tensor | None = None  # [out_total] (PEFT lora_bias), scaled

    def add_delta(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out += the LoRA delta of input rows x (out may be a view of the output)."""
        h = F.linear(x, self.A)  # [n, r_total]: one matmul for all target modules
        for block in self.blocks:
            width, rank = block.B.shape
            out[:, block.offset:block.offset + width].addmm_(
                h[:, block.r0:block.r0 + rank], block.B.t())
        if self.bias is not None:
            out += self.bias


@dataclass(eq=False)
class LoraAdapter:
    """One loaded adapter: LoRA pairs per site, plus an optional classifier head."""

    key: str
    sites: dict[tuple[int, str], LoraSite]
    head_weight: torch.Tensor | None = None  # PEFT modules_to_save "score" (classification)
    head_bias: torch.Tensor | None = None
    config: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors: list[torch.Tensor | None] = [self.head_weight, self.head_bias]
        for s in self.sites.values():
            tensors += [s.A, s.bias, *(block.B for block in s.blocks)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


_HEAD_NAMES = ("score", "classifier")


def load_lora_adapter(folder: Path, key: str,
                      site_of: Callable[[str], SiteTarget | None],
                      dtype: torch.dtype) -> LoraAdapter:
    """Read a PEFT LoRA folder and lay it out for the decoder whose sites `site_of` maps."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidRequest(
            f"{folder} is not a PEFT LoRA adapter folder: it needs adapter_config.json and "
            "adapter_model.safetensors (as PeftModel.save_pretrained writes them)",
            param="model",
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidRequest(f"adapter {key}: only LoRA adapters can be served, "
                             f"this one is {config.get('peft_type')}", param="model")
    if config.get("use_dora"):
        raise InvalidRequest(f"adapter {key}: DoRA adapters are not supported; "
                             "merge it into the base or retrain without use_dora",
                             param="model")
    state = load_file(str(weights_path))

    # Group the tensors by module: "base_model.model.<module>.lora_A.weight" etc.
    modules: dict[str, dict[str, torch.Tensor]] = {}
    head_weight = head_bias = None
    for name, tensor in state.items():
        short = name.removeprefix("base_model.model.")
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.(weight|bias)", short)
        if match:
            modules.setdefault(match[1], {})[f"{match[2]}.{match[3]}"] = tensor
            continue
        head = re.fullmatch(r"(?:.+\.)?(score|classifier)(?:\.modules_to_save)?\.(weight|bias)",
                            short)
        if head:
            if head[2] == "weight":
                head_weight = tensor.to(dtype)
            else:
                head_bias = tensor.to(dtype)
            continue
        raise InvalidRequest(
            f"adapter {key}: tensor {name!r} is not a LoRA weight the engine can serve "
            "(supported: LoRA on linear projections, and a classifier head)",
            param="model",
        )

    grouped: dict[tuple[int, str], list[tuple[SiteTarget, torch.Tensor, torch.Tensor,
                                                torch.Tensor | None]]] = {}
    for module, tensors in modules.items():
        target = site_of(module)
        if target is None:
            raise InvalidRequest(
                f"adapter {key}: LoRA on {module!r} is not supported by the engine "
                "(supported: attention and MLP projections, lm_head)", param="model")
        a, b = tensors.get("lora_A.weight"), tensors.get("lora_B.weight")
        if a is None or b is None or b.shape[0] != target.width or a.shape[0] != b.shape[1]:
            raise InvalidRequest(f"adapter {key}: LoRA weights of {module!r} are incomplete or "
                                 "do not fit the base model", param="model")
        rank = a.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module,
                               config.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        bias = tensors.get("lora_B.bias")
        grouped.setdefault((target.layer, target.site), []).append(
            (target, a.float(), b.float() * scale, None if bias is None else bias.float() * scale)
        )

    sites: dict[tuple[int, str], LoraSite] = {}
    for site_key, parts in grouped.items():
        parts.sort(key=lambda p: p[0].offset)
        total = parts[0][0].total
        bias = torch.zeros(total) if any(p[3] is not None for p in parts) else None
        blocks, r0 = [], 0
        for target, a, b, bb in parts:
            blocks.append(LoraBlock(target.offset, r0, b.to(dtype).contiguous()))
            if bb is not None and bias is not None:
                bias[target.offset:target.offset + target.width] = bb
            r0 += a.shape[0]
        A = torch.cat([p[1] for p in parts], dim=0).to(dtype).contiguous()
        sites[site_key] = LoraSite(A, blocks, None if bias is None else bias.to(dtype))
    return LoraAdapter(key=key, sites=sites, head_weight=head_weight, head_bias=head_bias,
                       config=config)


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's alpha_pattern: a key matches a module name by its dotted suffix / regex."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(value)
    return float(default)


class LoraBatch:
    """Which flattened token rows of a step use which adapter."""

    def __init__(self, token_adapters: Sequence[LoraAdapter | None],
                 row_adapters: Sequence[LoraAdapter | None]) -> None:
        self.token_adapters = list(token_adapters)  # per flattened token (generic runner)
        self.token_groups = _groups(token_adapters)
        self.row_groups = _groups(row_adapters)

    @staticmethod
    def build(token_adapters: Sequence[LoraAdapter | None],
              row_adapters: Sequence[LoraAdapter | None]) -> LoraBatch | None:
        if all(a is None for a in token_adapters) and all(a is None for a in row_adapters):
            return None
        return LoraBatch(token_adapters, row_adapters)

    def touches(self, site: str, layer: int = -1) -> bool:
        """Whether any adapter of the step's rows has LoRA weights at this site."""
        return any((layer, site) in adapter.sites for adapter, _ in self.row_groups)

    def apply(self, layer: int, site: str, x: torch.Tensor, y: torch.Tensor,
              rows: bool = False) -> None:
        """y += LoRA delta of each adapter group, computed from the site's input x."""
        for adapter, selector in (self.row_groups if rows else self.token_groups):
            lora = adapter.sites.get((layer, site))
            if lora is None:
                continue
            if isinstance(selector, slice):
                lora.add_delta(x[selector], y[selector])  # in place, through a view
            else:
                delta = y.new_zeros(len(selector), y.shape[1])
                lora.add_delta(x.index_select(0, selector), delta)
                y.index_add_(0, selector, delta)


def _groups(adapters: Sequence[LoraAdapter | None]
            ) -> list[tuple[LoraAdapter, slice | torch.Tensor]]:
    """Per adapter, its rows: a slice when they are contiguous, else an index tensor."""
    rows: dict[int, tuple[LoraAdapter, list[int]]] = {}
    for i, adapter in enumerate(adapters):
        if adapter is not None:
            rows.setdefault(id(adapter), (adapter, []))[1].append(i)
    groups: list[tuple[LoraAdapter, slice | torch.Tensor]] = []
    for adapter, idx in rows.values():
        if idx[-1] - idx[0] + 1 == len(idx):
            groups.append((adapter, slice(idx[0], idx[-1] + 1)))
        else:
            groups.append((adapter, torch.tensor(idx, dtype=torch.long)))
    return groups
