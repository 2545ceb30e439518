"""A training loader that Lightning can checkpoint mid-epoch, for exact resume.

Lightning saves ``state_dict()`` of any train loader that has one, and restores it when a run
resumes. This loader's state is (epoch, batches consumed); its sampler is a
``DistributedSampler`` (also with one process), whose order depends only on (seed, epoch), so
a resumed run sees exactly the batches the interrupted run had left, in the same order, on
every rank. Lightning keeps a user-supplied DistributedSampler as is.
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the first ``skip`` samples of one given epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip_epoch: int | None = None
        self.skip = 0

    def _skipped(self) -> int:
        return self.skip if self.skip_epoch == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self._skipped() :])

    def __len__(self) -> int:
        # The remaining length, so Lightning knows when a resumed epoch ends.
        return self.num_samples - self._skipped()


class ResumableDataLoader(DataLoader):
    """DataLoader over a ResumableSampler that counts the batches it has handed out."""

    sampler: ResumableSampler

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, drop_last=True, **kwargs)
        self._consumed = 0

    def __iter__(self):
        self._consumed = self.sampler._skipped() // self.batch_size
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "consumed_batches": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip_epoch = state["epoch"]
        self.sampler.skip = state["consumed_batches"] * self.batch_size
