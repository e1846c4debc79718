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
