"""Model weights as fp16 chunks: what comes back from a lent GPU machine, whose file size per
transfer is capped (16 MiB a file). fp16 keeps ~3 significant digits, far finer than the int8
the bundles are quantized to; `load_fp16_chunks` returns fp32 tensors."""

from __future__ import annotations

from pathlib import Path

import torch

MAX_CHUNK_BYTES = 15_000_000
ALIASES = "__aliases__"


def save_fp16_chunks(
    state: dict[str, torch.Tensor], out: Path, stem: str, max_bytes: int = MAX_CHUNK_BYTES
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{stem}-*.pt"):
        old.unlink()
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    aliases: dict[str, str] = {}  # tied weights (AWD-LSTM's embedding = decoder) are written once
    seen: dict[tuple[int, tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = tensor.detach().cpu()
        t = t.half() if t.is_floating_point() else t
        nbytes = t.numel() * t.element_size()
        if nbytes > max_bytes:  # one tensor over the cap: split along its first dimension
            rows = max(1, max_bytes // max(1, nbytes // t.shape[0]))
            for j, part in enumerate(torch.split(t, rows)):
                chunks.append({f"{name}@{j}": part.clone()})
            chunks.append({})
            size = 0
            continue
        if size + nbytes > max_bytes and chunks[-1]:
            chunks.append({})
            size = 0
        chunks[-1][name] = t
        size += nbytes
    chunks[0][ALIASES] = aliases  # type: ignore[assignment]
    paths = []
    for i, chunk in enumerate(c for c in chunks if c):
        path = out / f"{stem}-{i}.pt"
        torch.save(chunk, path)
        paths.append(path)
    return paths


def load_fp16_chunks(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    paths = sorted(directory.glob(f"{stem}-*.pt"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not paths:
        raise FileNotFoundError(f"no {stem}-*.pt weight chunks in {directory}")
    merged: dict[str, torch.Tensor] = {}
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    aliases: dict[str, str] = {}
    for path in paths:
        for name, t in torch.load(path, map_location="cpu", weights_only=True).items():
            if name == ALIASES:
                aliases.update(t)
            elif "@" in name:
                base, j = name.rsplit("@", 1)
                parts.setdefault(base, []).append((int(j), t))
            else:
                merged[name] = t
    for base, pieces in parts.items():
        merged[base] = torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])])
    merged = {k: (v.float() if v.is_floating_point() else v) for k, v in merged.items()}
    for (
        name,
        target,
    ) in aliases.items():  # the same tensor object, so load_state_dict keeps them tied
        merged[name] = merged[target]
    return merged
