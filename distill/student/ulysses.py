"""DeepSpeed Ulysses sequence parallelism under TRL's SFTTrainer, made to train and resume like any other layout.

Why: the 14B/32B recipes split each 32k trace over 2 GPUs with Ulysses, through what accelerate, transformers and
DeepSpeed provide (``distributed.parallelism_config`` turns it on). Used as shipped (transformers 5.24, accelerate
1.15, DeepSpeed 0.19), that path had four faults, each found by a CPU test that compares the run with one
process (tests/test_student_sharded.py):
- packed batches stopped at the first step (the loader cannot shard TRL's 1-D document boundaries);
- every trace of a step weighed the same, whatever its length;
- a run resumed mid-epoch stopped at once (the Trainer's batch skipping does not know the Ulysses loader), and
  one resumed at an epoch boundary drew an earlier epoch's order (the epoch did not reach the sampler);
- on CPUs (gloo) an SP group without global rank 0 failed its first backward (a torch bug).
Each fix below is small and says which of these it answers.
"""

from __future__ import annotations

from typing import Any, Callable

BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def boundaries_left_to_position_ids(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """``collate`` without the packed row's document boundaries.

    Why: DeepSpeed's Ulysses data loader shards every tensor of a batch along the sequence and stops with an
    IndexError on TRL's 1-D ``cu_seq_lens_*``. The attention finds the same boundaries again in the position ids
    Ulysses all-gathers (flash-attention's varlen path, ``attention.packed_boundaries``)."""
    def collate_fn(examples: list[dict]) -> dict:
        batch = collate(examples)
        for key in BOUNDARY_KEYS:
            batch.pop(key, None)
        return batch

    return collate_fn


def resumable_loader(adapter: Any) -> Any:
    """DeepSpeed's ``UlyssesSPDataLoaderAdapter`` ``adapter`` as a loader the Trainer can resume.

    Why: the adapter keeps one iterator over the wrapped loader for the whole run and has no ``set_epoch``, so
    the Trainer's epoch never reached the sampler; the wrapped loader counted its own passes instead, and that
    count only moves when a pass is drawn past its end. An unbroken run came out in the right order (each epoch
    after the first began with one empty accumulation step while the old pass ran out). A resumed run did not:
    the checkpoint's epoch was never set, so the first pass after the resume drew the order of an earlier epoch.
    And the Trainer skips the batches a checkpoint already trained with accelerate's ``skip_first_batches``,
    which reads a plain DataLoader's fields: on the adapter it stopped with ``AttributeError:
    'UlyssesSPDataLoaderAdapter' object has no attribute 'dataset'``, so every resubmission of a preempted
    14B/32B run failed unless its checkpoint fell on an epoch boundary.

    Here ``set_epoch`` sets the wrapped loader's epoch and starts its pass, as ``iter()`` does on any other
    loader, and ``skipped`` skips whole rounds (one batch per SP rank, ``sp`` micro-batches) in the wrapped
    loader without loading them, then drops the part of a round the checkpoint had already trained."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    if not isinstance(adapter, UlyssesSPDataLoaderAdapter):
        return adapter

    class ResumableUlyssesLoader(UlyssesSPDataLoaderAdapter):
        trained = 0  # micro-batches of the first round that the checkpoint already trained

        def set_epoch(self, epoch: int) -> None:
            self.dl.set_epoch(epoch)
            self.iter = iter(self.dl)  # a new pass for this epoch, as iter() gives on any other loader
            self.micro_batches.clear()

        def skipped(self, micro_batches: int) -> "ResumableUlyssesLoader":
            from accelerate import skip_first_batches

            rounds, trained = divmod(micro_batches, self.sp_world_size)
            loader = ResumableUlyssesLoader(skip_first_batches(self.dl, rounds), sp_rank=self.sp_rank,
                                            sp_group=self.sp_group, sp_world_size=self.sp_world_size,
                                            device=self.device)
            loader.trained = trained
            return loader

        def refill(self) -> None:
            super().refill()
            for _ in range(self.trained):
                self.micro_batches.popleft()
            self.trained = 0

    return ResumableUlyssesLoader(adapter.dl, sp_rank=adapter.sp_rank, sp_group=adapter.sp_group,
                                  sp_world_size=adapter.sp_world_size, device=adapter.device)


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
    """accelerate's ``skip_first_batches``, except for a :func:`resumable_loader`, which skips itself. Installed
    in place of the name transformers' Trainer calls when it resumes mid-epoch."""
    from accelerate import skip_first_batches as skip_in_dataloader

    if hasattr(dataloader, "skipped"):
        return dataloader.skipped(num_batches)
    return skip_in_dataloader(dataloader, num_batches)


def ulysses_sft_trainer(base: type) -> type:
    """``base`` (TRL's SFTTrainer) made right for DeepSpeed Ulysses sequence parallelism, in three ways.

    Packed batches: the collator leaves out the document boundaries (:func:`boundaries_left_to_position_ids`).

    Resume: the training loader is a :func:`resumable_loader`.

    Token weighting: under SP the Trainer takes each micro-batch's loss as the mean over its own tokens and
    divides by the accumulation steps (it counts no ``num_items_in_batch`` there), so in one step a 1k-token
    trace's tokens weigh 32 times those of a 32k-token one. Without SP every token of the step weighs the same.
    The 14B/32B recipes accumulate 24 micro-batches of one trace each, 1k-32k tokens long, so they would train
    towards short traces. Each micro-batch's loss is rescaled here by its share of the step's tokens
    (n_i x data-parallel replicas x accumulation / the step's tokens over all ranks), which is the non-SP
    weighting; tests/test_student_sharded.py compares the curves with one process."""
    import transformers.trainer

    from .distributed import scaled_loss

    transformers.trainer.skip_first_batches = skip_first_batches

    class UlyssesSFTTrainer(base):
        step_tokens: int | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.data_collator = boundaries_left_to_position_ids(self.data_collator)  # no-op for padded batches

        def _prepare_for_training(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            model, loader = super()._prepare_for_training(*args, **kwargs)
            loader = resumable_loader(loader)
            self.callback_handler.train_dataloader = loader
            return model, loader

        def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> Any:
            import torch

            counted = super()._get_num_items_in_batch(batch_samples, device)
            self.step_tokens = None
            if counted is None and batch_samples and "shift_labels" in batch_samples[0]:
                local = sum((b["shift_labels"] != -100).sum() for b in batch_samples)
                self.step_tokens = int(self.accelerator.reduce(torch.as_tensor(local, device=device), "sum"))
            return counted

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch
            from deepspeed.utils import groups

            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not (self.model.training and self.step_tokens and "shift_labels" in inputs):
                return result
            tokens = (inputs["shift_labels"] != -100).sum()
            torch.distributed.all_reduce(tokens, group=groups._get_sequence_parallel_group())
            replicas = self.accelerator.parallelism_config.data_parallel_size
            scale = tokens.float() * replicas * self.current_gradient_accumulation_steps / self.step_tokens
            return scaled_loss(result, scale, return_outputs)

    return UlyssesSFTTrainer


def repair_gloo_all_to_all() -> None:
    """Make torch's differentiable all-to-all work over gloo on a process subgroup. Called where a launch joins a
    gloo group (CPU runs); NCCL and every other backend keep torch's own code.

    Why: transformers' Ulysses loss gathers each SP rank's loss with ``torch.distributed.nn.functional.all_gather``,
    whose backward on gloo is an all-to-all emulated by one ``scatter`` per group member. torch (2.13) passes the
    member's group rank as ``src``, which ``scatter`` reads as a global rank, so every SP group without global
    rank 0 failed its first backward ("Global rank 0 is not part of group"): SP x data parallelism (2+ SP
    groups) could not train on CPUs, and its token weighting could not be tested. Here the rank goes in as
    ``group_src``, the argument torch has for it."""
    import torch.distributed as dist
    from torch.distributed.nn import functional as collectives

    all_to_all = collectives._AlltoAll
    if getattr(all_to_all, "repaired_for_gloo", False):
        return
    torch_forward = all_to_all.forward

    def forward(ctx: Any, group: Any, out_tensor_list: list, *tensors: Any) -> tuple:
        if dist.get_backend(group=group) != dist.Backend.GLOO:
            return torch_forward(ctx, group, out_tensor_list, *tensors)
        ctx.group = group
        ctx.input_tensor_size_list = [t.size() for t in tensors]  # what torch's backward reads
        inputs = [t.contiguous() for t in tensors]
        me = dist.get_rank(group=group)
        for source, out in enumerate(out_tensor_list):
            dist.scatter(out, inputs if source == me else None, group=group, group_src=source)
        return tuple(out_tensor_list)

    all_to_all.forward = staticmethod(forward)
    all_to_all.repaired_for_gloo = True
