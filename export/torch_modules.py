"""Plain, eval-mode torch versions of fastai's ULMFiT models, built for ONNX export.

fastai wraps its AWD-LSTM in WeightDropout / RNNDropout / EmbeddingDropout and keeps the LSTM
state inside the module. For export we copy the weights into stock `nn.LSTM`s (no dropout: it is
identity in eval mode anyway) and make the state an explicit input and output, so the ONNX graph
holds real `LSTM` nodes that `quantize_dynamic` can turn into `DynamicQuantizeLSTM`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _plain_lstms(awd: Any) -> nn.ModuleList:
    """Copy each WeightDropout(nn.LSTM) layer of a fastai AWD_LSTM into a stock nn.LSTM."""
    lstms = nn.ModuleList()
    for wd in awd.rnns:
        src = wd.module
        lstm = nn.LSTM(src.input_size, src.hidden_size, num_layers=1, batch_first=True)
        with torch.no_grad():
            plain: Any = lstm  # nn.Module.__getattr__ types its parameters as Tensor | Module
            plain.weight_ih_l0.copy_(src.weight_ih_l0)
            plain.weight_hh_l0.copy_(
                wd.weight_hh_l0_raw
            )  # WeightDropout's raw weight = eval weight
            plain.bias_ih_l0.copy_(src.bias_ih_l0)
            plain.bias_hh_l0.copy_(src.bias_hh_l0)
        lstms.append(lstm)
    return lstms


def layer_sizes(awd: Any) -> list[int]:
    return [int(wd.module.hidden_size) for wd in awd.rnns]


class LanguageModelGraph(nn.Module):
    """(input_ids, h0, c0, h1, c1, ...) -> (logits of the last position, h0', c0', ...).

    Embedding and decoder weights are stored transposed, [emb, vocab]: the embedding is a column
    gather, the decoder a MatMul with the weight as the right operand. When fastai tied them
    (its default) they are ONE tensor, `emb_t`, and the tie survives export and int8 quantization
    as a single initializer; an untied decoder (`tie_weights=False`) gets its own `dec_t`.
    """

    def __init__(self, fastai_lm: Any) -> None:
        super().__init__()
        awd, decoder = fastai_lm[0], fastai_lm[1].decoder
        self.tied = decoder.weight.data_ptr() == awd.encoder.weight.data_ptr()
        self.emb_t = nn.Parameter(awd.encoder.weight.detach().t().contiguous())
        self.dec_t = (
            self.emb_t if self.tied else nn.Parameter(decoder.weight.detach().t().contiguous())
        )
        bias = decoder.bias
        self.decoder_bias = nn.Parameter(
            bias.detach().clone() if bias is not None else torch.zeros(self.dec_t.shape[1])
        )
        self.lstms = _plain_lstms(awd)
        self.eval()

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.index_select(self.emb_t, 1, input_ids.reshape(-1))  # [emb, batch*seq]
        x = x.t().reshape(input_ids.shape[0], input_ids.shape[1], -1)
        new_states: list[torch.Tensor] = []
        for i, lstm in enumerate(self.lstms):
            x, (h, c) = lstm(x, (states[2 * i], states[2 * i + 1]))
            new_states += [h, c]
        logits = torch.matmul(x[:, -1], self.dec_t) + self.decoder_bias
        return (logits, *new_states)


class ClassifierGraph(nn.Module):
    """(input_ids right-padded, lengths) -> probabilities in one call (the whole-sequence
    layout; the reference that `ChunkedClassifierGraph`, what export writes, is tested against):
    fastai's SentenceEncoder + masked concat pooling + PoolingLinearClassifier head, without the
    bptt loop. `activation` is what the learner's loss applies in predict: softmax (single
    label) or sigmoid (multi-label).

    Exactness: the LSTM is unidirectional, so right padding cannot change outputs at real
    positions; pooling covers what fastai keeps: non-pad positions from the first bptt chunk
    that lies within the last `max_len` tokens (all of them for reviews up to max_len).
    """

    def __init__(self, fastai_clf: Any, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        encoder, head = fastai_clf[0], fastai_clf[1]
        awd = encoder.module
        self.bptt = int(encoder.bptt)
        self.max_len = int(encoder.max_len) if encoder.max_len is not None else 0  # 0: no limit
        self.pad_id = int(encoder.pad_idx)
        self.embedding = nn.Embedding.from_pretrained(
            awd.encoder.weight.detach().clone(), freeze=True
        )
        self.lstms = _plain_lstms(awd)
        self.head = head.layers  # LinBnDrop stack: plain BatchNorm/Dropout/Linear/ReLU in eval mode
        self.eval()

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        x = self.embedding(input_ids)
        for lstm in self.lstms:
            x, _ = lstm(x)
        keep = self._kept(input_ids, lengths, None)
        keep_f = keep.unsqueeze(2).to(x.dtype)
        last_idx = (lengths - 1).view(batch, 1, 1).expand(batch, 1, x.shape[2])
        last = torch.gather(x, 1, last_idx).squeeze(1)
        max_pool = x.masked_fill(~keep.unsqueeze(2), float("-inf")).max(dim=1).values
        avg_pool = (x * keep_f).sum(dim=1) / keep_f.sum(dim=1)
        return self._answer(last, max_pool, avg_pool)

    def _kept(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, offset: torch.Tensor | None
    ) -> torch.Tensor:
        """Which positions pooling covers ([batch, seq], the first at `offset` in the texts):
        real tokens from the first bptt chunk that lies within the last `max_len`."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if offset is not None:
            positions = positions + offset
        if self.max_len:
            overflow = torch.clamp(lengths - self.max_len, min=0)
            start = (
                torch.div(overflow + self.bptt - 1, self.bptt, rounding_mode="floor") * self.bptt
            )
        else:
            start = torch.zeros_like(lengths)
        return (
            (positions < lengths.unsqueeze(1))
            & (positions >= start.unsqueeze(1))
            & (input_ids != self.pad_id)
        )

    def _answer(
        self, last: torch.Tensor, max_pool: torch.Tensor, avg_pool: torch.Tensor
    ) -> torch.Tensor:
        """fastai's concat pooling [last, max, mean] -> head -> the loss's activation."""
        logits = self.head(torch.cat([last, max_pool, avg_pool], dim=1))
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return F.softmax(logits, dim=-1)


class ChunkedClassifierGraph(ClassifierGraph):
    """One time chunk of the classifier: (input_ids [batch, chunk] right-padded, lengths [batch]
    (whole texts), offset [1] (the chunk's first position), LSTM states, pooling state) ->
    (probabilities, new LSTM states, new pooling state).

    Why chunks: onnxruntime's LSTM computes the input projections of a whole input at once, so a
    run's activations grow with rows x length (~21 KiB a padded token for the shipped shape): a
    5,000-token text took ~105 MiB in one run. Fed in chunks with the state carried, a run's
    memory is bounded by rows x chunk, whatever the text length, and rows that have ended can
    leave the batch. fastai's own SentenceEncoder also encodes in `bptt` chunks carrying state.

    Pooling state: running max (-inf at start), running sum and count of kept positions, and the
    last real position's output. `probabilities` are final for rows whose text ends in this
    chunk (`lengths <= offset + chunk`); for other rows they are partial and meaningless.
    Exact against `ClassifierGraph` in fp32 up to summation order (tested).
    """

    def forward(  # type: ignore[override]  # a chunk step takes the state, not just ids
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        offset: torch.Tensor,
        *state: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n = len(self.lstms)
        lstm_states, (pool_max, pool_sum, pool_count, last) = state[: 2 * n], state[2 * n :]
        batch, seq = input_ids.shape
        x = self.embedding(input_ids)
        new_states: list[torch.Tensor] = []
        for i, lstm in enumerate(self.lstms):
            x, (h, c) = lstm(x, (lstm_states[2 * i], lstm_states[2 * i + 1]))
            new_states += [h, c]
        keep = self._kept(input_ids, lengths, offset)
        keep_f = keep.unsqueeze(2).to(x.dtype)
        chunk_max = x.masked_fill(~keep.unsqueeze(2), float("-inf")).max(dim=1).values
        pool_max = torch.maximum(pool_max, chunk_max)
        pool_sum = pool_sum + (x * keep_f).sum(dim=1)
        pool_count = pool_count + keep_f.sum(dim=1)
        last_pos = lengths - 1 - offset
        in_chunk = ((last_pos >= 0) & (last_pos < seq)).unsqueeze(1)
        gather_idx = (
            torch.clamp(last_pos, 0, seq - 1).view(batch, 1, 1).expand(batch, 1, x.shape[2])
        )
        last = torch.where(in_chunk, torch.gather(x, 1, gather_idx).squeeze(1), last)
        avg_pool = pool_sum / torch.clamp(pool_count, min=1.0)
        # A row whose kept window has not begun still has max -inf; the head must not see it:
        # int8's dynamic quantization scales the head's input over the whole batch, so one -inf
        # would make every row's answer NaN. Those rows' answers are not final anyway.
        seen_max = torch.where(pool_count > 0, pool_max, torch.zeros_like(pool_max))
        probs = self._answer(last, seen_max, avg_pool)
        return (probs, *new_states, pool_max, pool_sum, pool_count, last)
