"""Model of the text classifier: a small transformer encoder over token ids, and its export.

``TextTransformer``: token and position embeddings, ``num_layers`` pre-norm encoder blocks (multi-head
self-attention that ignores ``[PAD]``, then a GELU feed-forward layer), a final layer norm, the
mean of the non-padding positions, and a linear layer to one logit per class. Written out with
plain tensor operations (no fused attention kernels), so that PyTorch and ONNX Runtime compute the
same graph; trained from scratch, nothing is downloaded.

``model.onnx`` takes ``token_ids`` (int64, ``[batch, sequence]``, ``sequence <= max_length``, the
ids of ``tokenizer.json``, ``[PAD]`` = 0 after the text) and returns ``logits`` (float32,
``[batch, classes]``). The files and the parity check are the job runtime's
(:mod:`aifp_runtime.export`, the same as every recipe's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aifp_runtime.export import FORMATS, ONNX_OPSET, OnnxSignature, export_artifacts
from text_data import TextStats, iter_test_rows
from text_tokenizer import PAD_ID, TOKENIZER_FILE

__all__ = ["FORMATS", "ONNX_INPUT", "ONNX_OPSET", "build_model", "export_model_files", "probe_ids"]

#: the name of the ONNX graph's input
ONNX_INPUT = "token_ids"
#: added to the attention scores of ``[PAD]`` keys: their weight underflows to zero
MASKED = -1e9


def build_model(vocab_size: int, max_length: int, num_classes: int, hp: dict[str, Any]) -> Any:
    """A ``TextTransformer`` of the hyperparameters' shape (the width is ``num_heads * head_dim``)."""
    import torch
    from torch import nn

    heads, head_dim = int(hp["num_heads"]), int(hp["head_dim"])
    dim = heads * head_dim

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(head_dim)) + bias
            return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, dim))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attention = SelfAttention()
            self.norm2 = nn.LayerNorm(dim)
            self.feedforward = nn.Sequential(nn.Linear(dim, int(hp["feedforward_dim"])), nn.GELU(),
                                             nn.Linear(int(hp["feedforward_dim"]), dim))
            self.dropout = nn.Dropout(float(hp["dropout"]))

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            x = x + self.dropout(self.attention(self.norm1(x), bias))
            return x + self.dropout(self.feedforward(self.norm2(x)))

    class TextTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
            self.positions = nn.Embedding(max_length, dim)
            self.dropout = nn.Dropout(float(hp["dropout"]))
            self.blocks = nn.ModuleList(Block() for _ in range(int(hp["num_layers"])))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)
            for table in (self.tokens, self.positions):
                nn.init.normal_(table.weight, std=0.02)
            with torch.no_grad():
                self.tokens.weight[PAD_ID].zero_()

        def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
            keep = (token_ids != PAD_ID).to(torch.float32)                      # [batch, sequence]
            bias = ((1.0 - keep) * MASKED)[:, None, None, :]                     # [batch, 1, 1, sequence]
            h = self.dropout(self.tokens(token_ids) + self.positions.weight[: token_ids.shape[1]])
            for block in self.blocks:
                h = block(h, bias)
            h = self.norm(h)
            pooled = (h * keep[:, :, None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
            return self.head(pooled)

    return TextTransformer()


def probe_ids(seed: int, vocab_size: int, max_length: int, rows: int = 16) -> Any:
    """Synthetic token ids (no data values): random ids, each row padded after a random length."""
    import numpy as np

    rng = np.random.default_rng([int(seed), 1])
    ids = rng.integers(1, vocab_size, size=(rows, max_length), dtype=np.int64)
    lengths = rng.integers(1, max_length + 1, size=rows)
    ids[np.arange(max_length)[None, :] >= lengths[:, None]] = PAD_ID
    return ids


def export_model_files(model: Any, stats: TextStats, hp: dict[str, Any], files: list[Path],
                       output_dir: Path) -> dict[str, Any]:
    """Write model.pt, model.safetensors, model.onnx and onnx_check.json; return the parity check."""
    import torch

    model = (model.module if hasattr(model, "module") else model).cpu().eval()
    tok = stats.tokenizer
    meta = {"format": "pt", "classes": json.dumps(stats.classes, default=str), "text_column": hp["text_column"],
            "input": f"token ids (int64) of {TOKENIZER_FILE}, [PAD]={PAD_ID} after the text",
            "tokenizer_sha256": tok.sha256, "max_length": str(tok.max_length)}
    return export_artifacts(
        output_dir, weights=model, exported=model,
        signature=OnnxSignature(ONNX_INPUT, torch.ones(2, tok.max_length, dtype=torch.int64),
                                {0: "batch", 1: "sequence"}),
        metadata=meta, heldout=iter_test_rows(files, hp, stats),
        probe=probe_ids(int(hp["seed"]), tok.vocab_size, tok.max_length),
    )
