"""Power et al. (2022)'s small decoder-only transformer for ``a ∘ b = c`` (the grokking_modadd option).

Input: the 4 tokens ``a ∘ b =`` with ``a, b ∈ {0, …, p−1}``, ``∘`` the token ``p`` and ``=`` the token
``p + 1`` (a vocabulary of ``p + 2``). Output: logits over the ``p`` residues at the last position (the
``=``), the answer ``c`` that the paper's sequence ``a ∘ b = c`` continues with.

Architecture (arXiv 2201.02177 §A.1; the released ``openai/grok`` ``transformer.py``): token embedding plus
a position embedding, then ``layers`` post-norm decoder blocks ``x ← LN(x + MHA(x))``,
``x ← LN(x + FFN(x))`` with causal self-attention, ``FFN = Linear(w, 4w) → ReLU → Linear(4w, w)``, no
dropout, and a linear read-out. Written with ``torch.nn`` modules; differences from the released code:
learned positions (it uses fixed sinusoids), biases in the linear maps (it has none), and an output layer
over the ``p`` answers rather than the whole vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SEQUENCE_LENGTH = 4  # a ∘ b =


def equation_tokens(a: Tensor, b: Tensor, modulus: int) -> Tensor:
    """The token rows ``[a, ∘, b, =]`` (long, shape ``(n, 4)``); ``∘`` is ``p`` and ``=`` is ``p + 1``."""
    op = torch.full_like(a, modulus)
    eq = torch.full_like(a, modulus + 1)
    return torch.stack([a, op, b, eq], dim=1)


class ModularTransformer(nn.Module):
    """A decoder-only transformer read out at its last position: tokens ``(n, L)`` → logits ``(n, p)``."""

    causal_mask: Tensor  # a buffer, registered in __init__

    def __init__(self, modulus: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.token = nn.Embedding(modulus + 2, width)
        self.position = nn.Embedding(SEQUENCE_LENGTH, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=4 * width,
                dropout=0.0,
                activation="relu",
                batch_first=True,
                norm_first=False,  # post-norm, as the released code
            )
            for _ in range(layers)
        )
        self.readout = nn.Linear(width, modulus)
        # Position i attends to positions ≤ i (True = blocked); a buffer, so it follows .to(device).
        mask = torch.ones(SEQUENCE_LENGTH, SEQUENCE_LENGTH, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """The last block's output at every position, ``(n, L, width)``."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x: Tensor = self.token(tokens) + self.position(positions)
        mask = self.causal_mask[:length, :length]
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return x

    def forward(self, tokens: Tensor) -> Tensor:
        logits: Tensor = self.readout(self.hidden_states(tokens)[:, -1])
        return logits
