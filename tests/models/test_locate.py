"""A mistyped local model folder fails at once, naming the closest folders, offline and with an unreachable Hub;
Hub ids in the cache (and ones a reachable Hub can answer) still load."""

import http.server
import os
import threading
import time

import pytest
from huggingface_hub import constants

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.hub import load_model
from clip_trl.models.locate import check_model_source, is_path_like
from clip_trl.models.modeling import load_pretrained

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture(params=["offline", "unreachable"])
def no_hub(request, monkeypatch, tmp_path):
    """No Hub to ask: `HF_HUB_OFFLINE=1`, or an endpoint that refuses connections. Empty Hub cache; the current
    folder holds `clip_finetuned/` and `runs/clip_finetuned/`."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    if request.param == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
        monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    work = tmp_path / "work"
    (work / "clip_finetuned").mkdir(parents=True)
    (work / "runs" / "clip_finetuned").mkdir(parents=True)
    monkeypatch.chdir(work)
    return request.param


def _fails_fast(load, name: str, match: str) -> str:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=match) as info:
        load(name)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name!r} took {elapsed:.2f} s to fail"
    return str(info.value)


def _trainer(name: str):
    return ClipContrastiveTrainer(
        model=name, args=ClipContrastiveConfig(output_dir="out", report_to="none", use_cpu=True)
    )


LOADERS = {"load_model": load_model, "load_pretrained": load_pretrained, "trainer": _trainer}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("./clip_finetunedd", "./clip_finetuned"),
        ("clip_finetunedd", "clip_finetuned"),
        ("runs/clip_finetunedd", "runs/clip_finetuned"),
    ],
)
def test_a_mistyped_folder_fails_at_once_with_the_closest_names(no_hub, loader, name, suggestion):
    message = _fails_fast(LOADERS[loader], name, rf"^No such folder: '{name}'")
    assert f"did you mean '{suggestion}'?" in message
    assert os.path.abspath(name) in message


def test_a_missing_name_with_nothing_close_says_why_the_hub_was_not_asked(no_hub):
    message = _fails_fast(load_model, "my-model", r"^No such folder: 'my-model'")
    assert "has no folder with a similar name" in message
    reason = "HF_HUB_OFFLINE is set" if no_hub == "offline" else f"the Hub at {UNREACHABLE} cannot be reached"
    assert f"it is not a Hub repository in the cache, while {reason}" in message
    # An org/name id that is not cached: the same, at once (not after a minute of retries).
    _fails_fast(load_model, "someone/not-cached", r"not a Hub repository in the cache")


def test_a_path_that_cannot_be_a_repo_id_fails_without_asking_the_hub(no_hub):
    message = _fails_fast(load_pretrained, "../elsewhere/model", r"^No such folder: '../elsewhere/model'")
    assert "does not exist either" in message and "Hub repository" not in message
    for name in ("./x", "../x", "/abs/x", "~/x", "a/b/c", "a--b", "bad name"):
        assert is_path_like(name), name
    for name in ("openai/clip-vit-base-patch32", "clip-vit", "google/siglip2-base-patch16-naflex"):
        assert not is_path_like(name), name


def test_cached_hub_ids_and_existing_folders_pass(no_hub, tmp_path):
    cache = tmp_path / "cache" / "models--openai--clip-vit-base-patch32" / "snapshots" / "abc"
    cache.mkdir(parents=True)
    check_model_source("openai/clip-vit-base-patch32")  # in the cache: on to from_pretrained
    check_model_source("clip_finetuned")
    check_model_source("./runs/clip_finetuned")
    with pytest.raises(FileNotFoundError, match="`local_files_only=True` was passed"):
        check_model_source("someone/not-cached", cache_dir=str(tmp_path / "cache"), local_files_only=True)


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_an_uncached_hub_id_goes_on_when_the_hub_answers(monkeypatch, tmp_path, delay):
    """A Hub that answers (a server on the loopback interface), even slower than the probe waits: an uncached id
    is left to `from_pretrained`."""
    from clip_trl.models import locate

    monkeypatch.setattr(locate, "HUB_PROBE_TIMEOUT", 0.1)

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            time.sleep(delay)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.chdir(tmp_path)
        check_model_source("openai/clip-vit-base-patch32")
        check_model_source("bert-base-uncased")
    finally:
        server.shutdown()
        server.server_close()
