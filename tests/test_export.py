"""The adapter GGUF: the Q/K row permutation matches llama.cpp's converter layout, and
the Q8_0 adapter (rank padded to its block) reads back at its trained rank."""

import numpy as np
import pytest

from kolm.export import permute_rows


def test_permute_rows_interleaves_rotary_halves_per_head():
    n_head, head_dim, r = 2, 4, 3
    w = np.arange(n_head * head_dim * r).reshape(n_head * head_dim, r)
    p = permute_rows(w, n_head)
    # Per head, HF keeps the two rotary halves [0,1 | 2,3]; llama.cpp wants them interleaved [0,2,1,3].
    assert [row[0] // r for row in p] == [0, 2, 1, 3, 4, 6, 5, 7]
    assert p.shape == w.shape
    assert sorted(map(tuple, p)) == sorted(map(tuple, w))


# -- the adapter's tensor type -------------------------------------------------------------


def _pairs(rank=8, width=64, out=96, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"blk.{i}.attn_q.weight": (
            rng.normal(size=(rank, width)).astype(np.float32),
            rng.normal(size=(out, rank)).astype(np.float32) / 10,
        )
        for i in range(2)
    }


def test_a_q8_0_adapter_is_padded_to_its_block_and_reads_back_at_its_trained_rank(tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from kolm.export import adapter_format, read_lora, write_adapter

    pairs = _pairs()
    path = tmp_path / "a.gguf"
    assert write_adapter(pairs, "llama", 16.0, path) == "q8_0"
    assert adapter_format(path) == {"tensor_type": "q8_0", "rank": 8, "stored_rank": 32}
    # llama.cpp scales by alpha / (its rank = the stored one): the update is unchanged.
    raw = GGUFReader(str(path))
    stored_alpha = float(raw.fields["adapter.lora.alpha"].contents())
    b_scale = float(raw.fields["kolm.adapter.b_scale"].contents())
    assert stored_alpha == 16.0 * 32 / 8 / b_scale
    t = {x.name: dequantize(x.data, x.tensor_type) for x in raw.tensors}
    a, b = t["blk.0.attn_q.weight.lora_a"], t["blk.0.attn_q.weight.lora_b"]
    assert a.shape == (32, 64) and b.shape == (96, 32)
    assert not a[8:].any() and not b[:, 8:].any()  # the padding is zeros
    top = max(np.abs(b0).max() for _, b0 in pairs.values()) * b_scale
    assert 0.5 <= top < 1.0 and np.log2(b_scale).is_integer()
    want = 16.0 / 8 * (pairs["blk.0.attn_q.weight"][1] @ pairs["blk.0.attn_q.weight"][0])
    np.testing.assert_allclose(stored_alpha / 32 * (b @ a), want, atol=0.05 * np.abs(want).max())

    alpha, back = read_lora(path)
    assert alpha == 16.0 and back.keys() == pairs.keys()
    for name, (a0, b0) in pairs.items():
        a1, b1 = back[name]
        assert a1.shape == a0.shape and b1.shape == b0.shape
        # 8-bit blocks: each value within half a step of its block's scale.
        assert np.abs(a1 - a0).max() <= np.abs(a0).max() / 127
        assert np.abs(b1 - b0).max() <= np.abs(b0).max() / 127


def test_an_f32_adapter_round_trips_exactly_and_is_rewritten_once_at_q8_0(tmp_path):
    from kolm.export import adapter_format, read_lora, requantize, write_adapter

    pairs = _pairs(rank=4)
    path = tmp_path / "a.gguf"
    assert write_adapter(pairs, "llama", 8.0, path, "f32") == "f32"
    assert adapter_format(path) == {"tensor_type": "f32", "rank": 4, "stored_rank": 4}
    alpha, back = read_lora(path)
    assert alpha == 8.0
    for name, (a0, b0) in pairs.items():
        assert np.array_equal(back[name][0], a0) and np.array_equal(back[name][1], b0)
    assert requantize(path, "llama") is True
    assert adapter_format(path) == {"tensor_type": "q8_0", "rank": 4, "stored_rank": 32}
    assert read_lora(path)[0] == 8.0
    assert requantize(path, "llama") is False  # already q8_0: the file is left alone
    assert not list(tmp_path.glob("*.partial"))


def test_a_width_q8_0_cannot_hold_falls_back_to_f32(tmp_path):
    from kolm.export import adapter_format, requantize, write_adapter

    path = tmp_path / "a.gguf"
    assert write_adapter(_pairs(width=48), "llama", 16.0, path) == "f32"
    assert adapter_format(path)["tensor_type"] == "f32"
    assert requantize(path, "llama") is False and not list(tmp_path.glob("*.partial"))


def test_an_unknown_adapter_type_is_refused(tmp_path):
    from kolm.errors import TrainingError
    from kolm.export import write_adapter

    with pytest.raises(TrainingError, match="not supported"):
        write_adapter(_pairs(), "llama", 16.0, tmp_path / "a.gguf", "q4_0")
    with pytest.raises(TrainingError, match="different ranks"):
        mixed = _pairs() | {"blk.9.attn_q.weight": _pairs(rank=4)["blk.0.attn_q.weight"]}
        write_adapter(mixed, "llama", 16.0, tmp_path / "b.gguf")


def test_a_small_b_is_scaled_into_q8_0_range_and_alpha_reads_back_exactly(tmp_path):
    """B entries near 1e-4 would get float16 block scales in the subnormal range; B is
    multiplied by a power of two (alpha divided by it) and read back to within 8 bits."""
    from kolm.export import read_lora, write_adapter

    pairs = {k: (a, b / 1000) for k, (a, b) in _pairs(rank=12).items()}
    path = tmp_path / "a.gguf"
    write_adapter(pairs, "llama", 16.0, path)
    alpha, back = read_lora(path)
    assert alpha == 16.0  # not 16 * 12 / 32 * 32 / 12 in float32
    for name, (a0, b0) in pairs.items():
        a1, b1 = back[name]
        assert a1.shape == a0.shape and b1.shape == (96, 12)
        assert np.abs(b1 - b0).max() <= np.abs(b0).max() / 127


def test_inspect_says_how_the_adapter_is_stored():
    from kolm.cli.common import _adapter_rows

    parts = {"adapter.gguf": {}, "base.gguf": {}}
    q8 = _adapter_rows(
        {"adapter": {"tensor_type": "q8_0", "rank": 8, "stored_rank": 32}, "parts": parts}
    )
    assert q8[0][0] == "adapter" and q8[0][1].startswith("q8_0, rank 8 (stored as 32")
    assert "checked when loaded" in q8[0][1]
    (old,) = _adapter_rows({"parts": parts})  # compiled before the record existed
    assert "compiled before 2026-12-05" in old[1] and "compile again" in old[1]
    (wide,) = _adapter_rows(
        {"adapter": {"tensor_type": "f32", "rank": 8, "stored_rank": 8}, "parts": parts}
    )
    assert "not a multiple of 32" in wide[1] and "stored as" not in wide[1]
    assert _adapter_rows({"parts": {"base.gguf": {}}}) == []  # a merged build
