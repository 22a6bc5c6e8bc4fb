"""`sftune memprofile` on a tiny config-built Llama: Stochastic Tuning's method state is this step's k selected
entries held once (k int64 indices), as the estimate counts them."""

from __future__ import annotations

import json

import pytest
from decoder_models import decoder_config

K = 2000  # of the model's 15,520 candidate entries: the indices (16 kB) dwarf the method's bookkeeping


@pytest.mark.parametrize("mode", ["grad", "update"])
def test_stochastic_holds_its_selection_once(cli, tmp_path, mode):
    """The selection is split per parameter (grad mode without flat gradients, update mode) in place, and the
    flat copy dropped: measured on SmolLM2-135M, the flat indices and their split copy were both held at the
    peak, twice the estimate's method state."""
    config = decoder_config("llama", vocab=200, bos=1, eos=2)
    config.pad_token_id = 0  # a classifier batch needs one; the synthetic batches never contain it
    config.save_pretrained(tmp_path)
    args = [str(tmp_path), "sst2", "--methods", "stochastic", "--batch-sizes", "2", "--seq-len", "16", "--steps", "2",
            "--cpu", "--random-init", "--mask-mode", mode, "--set", f"method.k={K}", "--format", "json"]
    code, out, err = cli("memprofile", *args)
    assert code == 0, err
    (cell,) = json.loads(out)["cells"]
    assert cell["status"] == "ok", cell
    index_bytes = 8 * K  # int64
    detail = cell["method_state_detail"]  # per attribute of the method, at its largest method state
    assert detail["masks"] == index_bytes and "selection" not in detail, detail
    # At the peak (the end of a forward pass): the indices, plus a few hundred bytes of layout and bounds.
    assert index_bytes <= cell["parts"]["method_state"] < index_bytes + 1024, cell["parts"]
    code, out, err = cli("memprofile", *args, "--estimate")
    assert code == 0, err
    assert json.loads(out)["cells"][0]["method_state_detail"]["masks"] == index_bytes
