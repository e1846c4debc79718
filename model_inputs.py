"""The transformers' input, for both families: X [B, T, 2] int64 (token id, position id), the position id of
position i being pos_offset + i (pos_offset = n_vocab + n_special, the rows before the position rows).

TF counterpart: the position ids the original's transform_roc writes (`np.arange(n_vocab + n_special, n_vocab +
n_special + n_ctx)`). Here for id lists of any length: what sample.py, heuristics.py and extract_features.py feed.
"""
import torch


def check_token_ids(seqs, pos_offset, names):
    """Raise a ValueError naming the first id list of seqs (named by names, in order) holding an id that is no token
    or special row (below 0, or pos_offset or beyond: a position row): its tokenizer is not the model's."""
    for name, seq in zip(names, seqs):
        if not seq:
            continue
        high, low = max(seq), min(seq)
        if high >= pos_offset:
            raise ValueError(f'{name} holds token id {high}, beyond the model\'s {pos_offset} token rows: its '
                             f'tokenizer is not the model\'s')
        if low < 0:
            raise ValueError(f'{name} holds token id {low}, below 0: its tokenizer is not the model\'s')


def pack_right_padded(seqs, pos_offset):
    """Return X [len(seqs), T, 2] int64 of id lists, T the longest (at least 1), each padded at the end with token 0.

    The attention is causal, so padding after a sequence cannot change its states.
    """
    T = max(max((len(seq) for seq in seqs), default=0), 1)
    x = torch.zeros(len(seqs), T, 2, dtype=torch.long)  # [B, T, 2]
    x[..., 1] = pos_offset + torch.arange(T)
    for b, seq in enumerate(seqs):
        x[b, :len(seq), 0] = torch.as_tensor(seq, dtype=torch.long)
    return x


def first_fit_rows(lengths, capacity):
    """Return (places, widths): per sequence length its (row, start) when the sequences are put first-fit, longest
    first, into rows of at most capacity positions, and each row's filled width."""
    places = [None] * len(lengths)
    widths = []
    for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
        row = next((r for r, width in enumerate(widths) if width + lengths[b] <= capacity), len(widths))
        if row == len(widths):
            widths.append(0)
        places[b] = (row, widths[row])
        widths[row] += lengths[b]
    return places, widths


def cheapest_rows(lengths, n_ctx, n_embd):
    """Return (places, widths) of first_fit_rows for the row capacity (the longest length, doubled up to n_ctx) whose
    rows cost least to run: per block a position costs about 24 n_embd^2 multiply-adds in the matmuls and 4 W n_embd
    in attention over a row of width W, so the cost is rows x W x (6 n_embd + W). The longest length as the capacity
    is never dearer than one sequence a row."""
    best = None
    capacity = max(lengths)
    while True:
        places, widths = first_fit_rows(lengths, capacity)
        width = max(widths)
        cost = len(widths) * width * (6 * n_embd + width)
        if best is None or cost < best[0]:
            best = (cost, places, widths)
        if capacity >= n_ctx:
            return best[1:]
        capacity = min(2 * capacity, n_ctx)


def pack_sequences(seqs, pos_offset, n_ctx, n_embd):
    """Return (x [P, W, 2] int64, segments [P, W] int64, places) of non-empty id lists put back to back into the
    cheapest rows (cheapest_rows): each sequence's position ids start at 0; segments names each position's sequence
    (its index; the padding at a row's end -1 - the row, a sequence of its own); places is per sequence its (row,
    start). With the packed mask (model_pytorch.packed_mask) each sequence runs as it would alone, and no position
    is spent on padding that its row does not need."""
    lengths = [len(seq) for seq in seqs]
    if not seqs or min(lengths) < 1 or max(lengths) > n_ctx:
        raise ValueError(f'pack 1 or more sequences of 1 to n_ctx={n_ctx} ids, not lengths {lengths}')
    places, widths = cheapest_rows(lengths, n_ctx, n_embd)
    x = torch.zeros(len(widths), max(widths), 2, dtype=torch.long)  # [P, W, 2]
    x[..., 1] = pos_offset
    segments = -1 - torch.arange(len(widths))[:, None].repeat(1, max(widths))  # [P, W]
    for b, (seq, (row, start)) in enumerate(zip(seqs, places)):
        x[row, start:start + len(seq), 0] = torch.as_tensor(seq, dtype=torch.long)
        x[row, start:start + len(seq), 1] = pos_offset + torch.arange(len(seq))
        segments[row, start:start + len(seq)] = b
    return x, segments, places
