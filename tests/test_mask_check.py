import gc

import torch

from sftune.engine.distributed import MaskCheck, mask_hash


class OneProcess:
    num_processes, process_index = 1, 0


def test_hash_follows_in_place_refills_and_new_tensors():
    check = MaskCheck(OneProcess(), enabled=False, log_dir=None)
    mask = torch.tensor([True, False, True])
    first = check.step_hash({"w": mask})[1].clone()
    mask[1] = True  # refilled in place (Child-Tuning F's buffers)
    assert not torch.equal(check.step_hash({"w": mask})[1], first)
    del mask
    gc.collect()
    # A new tensor may reuse the freed one's id: the hash must still be recomputed.
    fresh = torch.tensor([True, False, True])
    assert torch.equal(check.step_hash({"w": fresh})[1], first)
    assert torch.equal(mask_hash(torch.tensor([0, 2])), mask_hash(torch.tensor([True, False, True])))
