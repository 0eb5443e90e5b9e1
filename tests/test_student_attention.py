"""``sdpa_varlen`` on a GPU hands a packed row to torch's flash varlen kernel; these pin that hand-off on the CPU.

Why: the kernel is CUDA-only, so the GPU path cannot run here, and it is the path every packed GPU run without
flash-attn takes. What can be checked here is checked: the call against the real kernel's own shape rules (torch
runs its registered fake implementation on meta tensors, forward and backward), the layout round trip against
per-document SDPA with a CPU stand-in that keeps the kernel's contract (both causal spellings torch has had, with
and without GQA), that a float32 query (bf16 autocast over float32 masters) runs in half precision, and that CPU tensors never
take the kernel path.
"""

from __future__ import annotations

import pytest
import torch

from distill.student import attention

LENGTHS = [5, 1, 9, 3]


def _row(heads=4, kv_heads=2, dim=8, dtype=torch.float32, device="cpu", grad=False):
    n = sum(LENGTHS)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n, dim, generator=g, dtype=dtype).to(device)
    k, v = (torch.randn(1, kv_heads, n, dim, generator=g, dtype=dtype).to(device) for _ in range(2))
    for t in (q, k, v):
        t.requires_grad_(grad)
    cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, k, v, cu


def test_call_fits_the_installed_kernel_forward_and_backward():
    if attention.varlen_kernel() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    q, k, v, cu = _row(dtype=torch.bfloat16, device="meta", grad=True)
    out = attention.varlen_kernel_attention(q, k, v, cu, max(LENGTHS), scaling=None)
    assert out.shape == (1, sum(LENGTHS), 4, 8)  # (B, N, H, D), what transformers' attention interface returns
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape  # GQA: gradients land on the 2 key/value heads


def _cpu_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """The kernel's contract (packed (T, H, D), cumulative boundaries) computed per document on a CPU."""
    assert window_size == (-1, 0)  # causal
    return _per_doc(q, k, v, cu_q, scale, enable_gqa)


def _cpu_varlen_old(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, scale=None):
    """The first torch releases' spelling: is_causal, no GQA (the caller repeats the key/value heads)."""
    assert is_causal and q.shape[1] == k.shape[1]
    return _per_doc(q, k, v, cu_q, scale, False)


def _cpu_varlen_no_scale(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):
    """torch 2.9's spelling: is_causal and no ``scale`` (the model's scaling is folded into the query)."""
    assert is_causal and q.shape[1] == k.shape[1]
    return _per_doc(q, k, v, cu_q, None, False)


def _per_doc(q, k, v, cu, scale, gqa):
    assert cu.dtype == torch.int32 and int(cu[-1]) == q.shape[0]
    b = cu.tolist()
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=True, scale=scale,
        enable_gqa=gqa).transpose(0, 1) for s, e in zip(b[:-1], b[1:])])


@pytest.mark.parametrize("kernel", [_cpu_varlen, _cpu_varlen_old, _cpu_varlen_no_scale])
def test_kernel_path_equals_per_document_sdpa(monkeypatch, kernel):
    monkeypatch.setattr(attention, "varlen_kernel", lambda: (kernel, attention.causal_kwargs(kernel)))
    q, k, v, cu = _row()
    got = attention.varlen_kernel_attention(q, k, v, cu, max(LENGTHS), scaling=0.3)
    from transformers.integrations.sdpa_attention import repeat_kv

    want = attention.per_document_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), cu.tolist(), 0.0, 0.3)
    assert got.shape == want.shape == (1, sum(LENGTHS), 4, 8)
    torch.testing.assert_close(got, want)


def test_causal_spellings():
    assert attention.causal_kwargs(_cpu_varlen) == {"window_size": (-1, 0), "enable_gqa": True}
    assert attention.causal_kwargs(_cpu_varlen_old) == {"is_causal": True}
    assert attention.causal_kwargs(lambda q, k, v: q) is None  # a kernel we cannot make causal is not used


def test_cpu_tensors_never_take_the_kernel_path():
    q = torch.zeros(1, 4, 8, 8, dtype=torch.bfloat16)
    assert attention.kernel_dtype(q, dropout=0.0, training=True) is None


def test_float32_query_runs_the_kernel_in_the_given_half_precision():
    """Full fine-tuning trains float32 masters under bf16 autocast; the kernel takes only half precision."""
    if attention.varlen_kernel() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    q, k, v, cu = _row(device="meta", grad=True)
    out = attention.varlen_kernel_attention(q, k, v, cu, max(LENGTHS), None, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32


def test_per_document_zeros_the_tail_after_the_last_document():
    q, k, v, cu = _row(kv_heads=4)
    bounds = cu.tolist()[:-1]  # the last document's tokens are now padding after the final boundary
    out = attention.per_document_attention(q, k, v, bounds, 0.0, None)
    assert out.shape == (1, sum(LENGTHS), 4, 8)
    assert torch.count_nonzero(out[0, bounds[-1]:]) == 0 and torch.count_nonzero(out[0, :bounds[-1]]) > 0


def test_mask_is_skipped_only_for_one_causal_row_without_padding():
    """No mask where sdpa_varlen attends from the boundaries itself; sdpa's mask wherever anything else applies."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    one = dict(batch_size=1, q_length=6, kv_length=6)
    assert attention.varlen_mask(**one) is None
    padded = torch.tensor([[0, 1, 1, 1, 1, 1]])  # left padding
    cases = {"padding": dict(one, attention_mask=padded, allow_is_causal_skip=True),
             "sliding window": dict(one, local_size=2, mask_function=sliding_window_causal_mask_function(2)),
             "model's own mask rules": dict(one, use_vmap=True, allow_is_causal_skip=False),
             "bidirectional": dict(one, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)}
    for name, kwargs in cases.items():
        mask = attention.varlen_mask(**kwargs)
        assert mask is not None and mask.shape == (1, 1, 6, 6), name
    assert not attention.varlen_mask(**cases["padding"])[0, 0, 5, 0]  # the padded position stays masked
    assert attention.varlen_mask(**cases["sliding window"])[0, 0].sum() == 11  # 1 + 2 + 2 + 2 + 2 + 2 keys


def test_generation_matches_sdpa():
    """Without the mask, a cached generation (prefill then one-token steps, single and left-padded batches) still
    equals stock sdpa token for token: GKD's on-policy sampling runs the student with sdpa_varlen."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    attention.register()
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1)
    out = {}
    for impl in ("sdpa", attention.NAME):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()
        ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
        mask = (ids != 0).long()
        with torch.no_grad():
            out[impl] = [model.generate(input_ids=ids[1:], max_new_tokens=8, do_sample=False),
                         model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)]
    for plain, varlen in zip(out["sdpa"], out[attention.NAME]):
        assert torch.equal(plain, varlen)


def test_model_forward_takes_the_kernel_with_collator_or_position_boundaries(monkeypatch):
    """Through a real model forward, the kernel branch of sdpa_varlen_forward (CPU stand-in kernel) gives the
    per-trace loop's logits, with the collator's boundaries and with only restarting position ids."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    attention.register()
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention.NAME).eval()
    ids = torch.randint(2, 64, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32)
    bounds = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    with torch.no_grad():
        loop = model(input_ids=ids, position_ids=positions, **bounds).logits
        calls = []

        def kernel(*args, **kwargs):
            calls.append(args[5])  # max length
            return _cpu_varlen(*args, **kwargs)

        monkeypatch.setattr(attention, "varlen_kernel", lambda: (kernel, attention.causal_kwargs(_cpu_varlen)))
        monkeypatch.setattr(attention, "kernel_dtype", lambda query, dropout, training: torch.float32)
        with_bounds = model(input_ids=ids, position_ids=positions, **bounds).logits
        positions_only = model(input_ids=ids, position_ids=positions).logits
    assert calls == [max(LENGTHS)] * 4  # 2 layers x 2 forwards, every one through the kernel
    torch.testing.assert_close(with_bounds, loop)
    torch.testing.assert_close(positions_only, loop)
