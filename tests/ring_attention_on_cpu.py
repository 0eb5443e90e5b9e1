"""torch's ring attention (context parallelism, the 70B recipe's 32k traces) given the CPU's attention kernel.

Why: torch's context parallelism swaps SDPA's GPU kernels (flash, memory-efficient, cuDNN) for its ring: each
rank keeps its query chunk and passes key/value chunks round the ring, merging the partial results by their
log-sum-exp (``_templated_ring_attention``, forward and backward). On a CPU, SDPA runs
``_scaled_dot_product_flash_attention_for_cpu`` instead, for which torch registers no ring rule, and the first
attention stops with "no sharding strategy". The CPU kernel returns the same (output, logsumexp) pair and its
backward takes the same arguments by the same names, so this registers it with torch's own ring functions,
exactly as torch registers the flash kernel: the same DTensor sharding (query, key, value, output and
logsumexp sharded on the sequence), the same handler, the same ring, rotation and load balancer. Only the kernel
each ring step calls differs. Test-only, imported by tests/fsdp_on_cpu.py: a CPU user has no ring to run.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._op_schema import OpSchema, OpStrategy, RuntimeSchemaInfo
from torch.distributed.tensor._ops.utils import expand_to_full_mesh_op_strategy
from torch.distributed.tensor.experimental._context_parallel import _attention as ring
from torch.distributed.tensor.experimental._context_parallel import _sharding_rules as rules
from torch.distributed.tensor.placement_types import Replicate, Shard

aten = torch.ops.aten
FORWARD = aten._scaled_dot_product_flash_attention_for_cpu.default
BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward.default
# what each ring step calls (benchmarks/bench_ring_balance.py times them per rank)
kernels = {"forward": aten._scaled_dot_product_flash_attention_for_cpu, "backward": BACKWARD}
SEQ = Shard(rules.SEQ_DIM)


def _forward_strategy(op_schema: OpSchema) -> OpStrategy:
    """(output, logsumexp, query, key, value): all replicated, or all sharded on the sequence (the ring)."""
    return expand_to_full_mesh_op_strategy(op_schema.get_mesh_from_args(), op_schema,
                                           [[Replicate()] * 5, [SEQ] * 5], input_index=2)


def _backward_strategy(op_schema: OpSchema) -> OpStrategy:
    """(grad q, k, v, grad_out, q, k, v, out, logsumexp): likewise."""
    return expand_to_full_mesh_op_strategy(op_schema.get_mesh_from_args(validate=False), op_schema,
                                           [[Replicate()] * 9, [SEQ] * 9], input_index=3)


def _ring_forward(mesh, query, key, value, dropout_p: float = 0.0, is_causal: bool = False, *,
                  attn_mask=None, scale=None):
    if attn_mask is not None:
        raise NotImplementedError("ring attention takes no attention mask (accelerate's hook makes it is_causal)")
    return ring._templated_ring_attention(mesh.get_group(), rules.SEQ_DIM, kernels["forward"], query=query,
                                          key=key, value=value, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale)


def _ring_backward(mesh, grad_out, query, key, value, out, logsumexp, dropout_p: float, is_causal: bool, *,
                   attn_mask=None, scale=None):
    return ring._templated_ring_attention_backward(
        mesh.get_group(), rules.SEQ_DIM, kernels["backward"], grad_out=grad_out, grad_out_name="grad_out",
        query=query, key=key, value=value, out=out, logsumexp=logsumexp, is_causal=is_causal, dropout_p=dropout_p,
        scale=scale)


_RING = {FORWARD: _ring_forward, BACKWARD: _ring_backward}


def _cpu_sdpa_handler(op_call, args, kwargs):
    """torch's ``_sdpa_handler`` with the CPU kernel's ring functions: unwrap the DTensors, check that the
    sharding needs no redistribution, run the ring on the local chunks, wrap the results back."""
    dispatcher = DTensor._op_dispatcher
    op_info = dispatcher.unwrap_to_op_info(op_call, args, kwargs)
    dispatcher.sharding_propagator.propagate(op_info)
    spec = op_info.output_sharding
    if spec is None or spec.needs_redistribute:
        raise AssertionError("ring attention inputs must all be sharded on the sequence")
    local = _RING[op_call](op_info.compute_mesh, *op_info.local_args, **op_info.local_kwargs)
    return dispatcher.wrap(local, spec.output_spec)


_register = rules.register_cp_sharding_rules


def _register_with_cpu_kernel() -> None:
    """torch's own registration, then the CPU kernel's, kept with torch's so that unregistering (when the
    context-parallel block ends) removes both."""
    _register()
    for op, strategy, schema_info in ((FORWARD, _forward_strategy, RuntimeSchemaInfo(3)),
                                      (BACKWARD, _backward_strategy, None)):
        if op not in rules._cp_strategy_contexts:
            ctx = rules._op_strategy_context(op, strategy, schema_info)
            rules._original_strategies[op] = ctx.__enter__()
            rules._cp_strategy_contexts[op] = ctx


rules.register_cp_sharding_rules = _register_with_cpu_kernel
ring.custom_ops.update({FORWARD: _cpu_sdpa_handler, BACKWARD: _cpu_sdpa_handler})
