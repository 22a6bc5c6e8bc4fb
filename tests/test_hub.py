"""An unreachable Hub fails within seconds, with the sentence that says how to work offline."""

import time

import pytest

from sftune import hub


@pytest.fixture
def unreachable_hub(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    hub._reachable.cache_clear()
    yield
    hub._reachable.cache_clear()


def test_unreachable_hub_model_fails_fast_with_the_offline_sentence(cli, unreachable_hub, glue_dir, tmp_path):
    t0 = time.perf_counter()
    code, _, stderr = cli("train", "some-org/some-model", "rte", "--data-dir", glue_dir, "-o", tmp_path / "r")
    assert code == 2 and time.perf_counter() - t0 < 15
    assert "cannot reach the Hugging Face Hub (http://127.0.0.1:9)" in stderr
    assert "model 'some-org/some-model'" in stderr
    assert "HF_HUB_OFFLINE=1" in stderr and "--data-dir" in stderr and "Traceback" not in stderr


def test_unreachable_hub_data_fails_fast(cli, unreachable_hub, tiny_bert, tmp_path, monkeypatch):
    monkeypatch.delenv("SFTUNE_DATA_DIR", raising=False)
    code, _, stderr = cli("train", tiny_bert, "rte", "-o", tmp_path / "r")
    assert code == 2 and "the data set nyu-mll/glue/rte" in stderr and "HF_HUB_OFFLINE=1" in stderr


def test_offline_mode_skips_the_probe_and_any_answer_means_reachable(unreachable_hub, monkeypatch):
    import http.server
    import threading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.require_hub("x")  # offline: never probes, never raises
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(Exception, match="HF_HUB_OFFLINE=1"):
        hub.require_hub("x")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    hub.require_hub("x")
    server.server_close()
