"""Tests for model_inputs.py's packing of sequences into rows: places that never overlap, rows within their
capacity, never dearer than one sequence a row, and inputs that say where each sequence is."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from model_inputs import cheapest_rows, first_fit_rows, pack_right_padded, pack_sequences

lengths_st = st.lists(st.integers(1, 40), min_size=1, max_size=12)


@given(lengths_st, st.integers(40, 80))
def test_first_fit_places_every_sequence_once_within_its_row(lengths, capacity):
    places, widths = first_fit_rows(lengths, capacity)
    filled = {}
    for length, (row, start) in zip(lengths, places):
        filled.setdefault(row, []).append((start, start + length))
    for row, spans in filled.items():
        spans.sort()
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # back to back
        assert spans[-1][1] == widths[row] <= capacity
    assert sorted(filled) == list(range(len(widths)))


@given(lengths_st, st.sampled_from([16, 64]))
def test_the_cheapest_rows_cost_no_more_than_one_sequence_a_row(lengths, n_embd):
    places, widths = cheapest_rows(lengths, 64, n_embd)
    width = max(widths)
    assert width <= max(max(lengths), 64)
    padded = len(lengths) * max(lengths) * (6 * n_embd + max(lengths))
    assert len(widths) * width * (6 * n_embd + width) <= padded


def test_short_prompts_of_mixed_lengths_share_one_row_and_equal_ones_keep_their_own():
    mixed = list(range(16, 33))  # as the inference benchmark's prompts
    assert cheapest_rows(mixed, 1024, 768)[1] == [sum(mixed)]
    assert cheapest_rows([64] * 16, 1024, 768)[1] == [64] * 16  # nothing to save, attention would cost more
    assert cheapest_rows([5, 500, 3, 7], 1024, 768)[1] == [515]


def test_pack_sequences_puts_each_sequence_at_its_place_with_its_own_positions():
    seqs = [[1, 2], [3], [4, 5, 6]]
    x, segments, places = pack_sequences(seqs, 100, n_ctx=8, n_embd=4)
    for b, (seq, (row, start)) in enumerate(zip(seqs, places)):
        assert x[row, start:start + len(seq), 0].tolist() == seq
        assert x[row, start:start + len(seq), 1].tolist() == [100 + i for i in range(len(seq))]
        assert (segments[row, start:start + len(seq)] == b).all()
    assert int((segments >= 0).sum()) == 6 and (segments[segments < 0] < 0).all()
    assert x.shape[:2] == segments.shape
    with pytest.raises(ValueError, match='n_ctx=8'):
        pack_sequences([[1] * 9], 100, n_ctx=8, n_embd=4)
    with pytest.raises(ValueError, match='1 to n_ctx'):
        pack_sequences([[1], []], 100, n_ctx=8, n_embd=4)


def test_pack_right_padded_pads_each_row_at_its_end():
    x = pack_right_padded([[7, 8, 9], [4]], 50)
    assert x[..., 0].tolist() == [[7, 8, 9], [4, 0, 0]]
    assert x[..., 1].tolist() == [[50, 51, 52]] * 2
    assert torch.equal(pack_right_padded([], 50), torch.zeros(0, 1, 2, dtype=torch.long))
