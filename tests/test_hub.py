"""Backbones by name and hf://: resolution, the Hugging Face cache offline, URL downloads, and the errors users see.

Everything runs offline: HF_HUB_OFFLINE=1, private Hugging Face and zsad caches, sockets refused, urllib faked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import FIXTURES

import zsad
from zsad.diffusion.hub import KNOWN_BACKBONES, BackboneEntry, resolve_backbone
from zsad.errors import BackboneLoadError

SMALL = FIXTURES / "small_state_dict.pt"
CONFIG = FIXTURES / "small_config.json"
SMALL_SHA = hashlib.sha256(SMALL.read_bytes()).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
OPENAI_URL = KNOWN_BACKBONES["openai-imagenet64"].source


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Private caches, offline mode, and any socket connection recorded and refused."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "zsad_cache"))
    # huggingface_hub reads these once, when first imported: another test (anomalib's imports) may have done so already
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield {"hf": tmp_path / "hf" / "hub", "zsad": tmp_path / "zsad_cache"}
    assert not attempts, f"a test tried to reach the network: {attempts}"


def put_in_hf_cache(cache: Path, repo_id: str, filename: str, src: Path, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """The layout huggingface_hub reads offline: blobs/<etag>, snapshots/<commit>/FILE -> blob, refs/<ref> = commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    blob = storage / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, blob)
    pointer = storage / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    if ref:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return pointer


def no_traceback_chain(err: BaseException) -> None:
    assert err.__cause__ is None and err.__suppress_context__, "user errors must not chain huggingface_hub/urllib tracebacks"


# --- hf://OWNER/REPO/FILE[@REVISION] ---------------------------------------------------------------


def test_hf_spec_resolves_offline_from_cache_latest_and_pinned(caches):
    latest = put_in_hf_cache(caches["hf"], "owner/repo", "small.pt", SMALL)
    pinned = put_in_hf_cache(caches["hf"], "owner/repo", "small.pt", SMALL, commit=OLD_COMMIT, ref=None)
    nested = put_in_hf_cache(caches["hf"], "owner/repo", "sub/dir/small.pt", SMALL)

    r = resolve_backbone("hf://owner/repo/small.pt")
    assert r.path == latest and r.format == "auto" and r.config is None and r.name is None and r.source == "hf://owner/repo/small.pt"
    assert resolve_backbone(f"hf://owner/repo/small.pt@{OLD_COMMIT}").path == pinned
    assert resolve_backbone(f"hf://owner/repo/small.pt@{COMMIT}").path == latest
    assert resolve_backbone("hf://owner/repo/sub/dir/small.pt").path == nested
    # str(Path("hf://...")) collapses the double slash (zsad score passes paths through Path): still the hub file.
    assert resolve_backbone(Path("hf://owner/repo/small.pt")).path == latest


def test_load_backbone_from_hf_spec_has_the_fixture_weights(caches):
    put_in_hf_cache(caches["hf"], "owner/repo", "small.pt", SMALL)
    put_in_hf_cache(caches["hf"], "owner/repo", "small.pt", SMALL, commit=OLD_COMMIT, ref=None)
    for spec in ("hf://owner/repo/small.pt", f"hf://owner/repo/small.pt@{OLD_COMMIT}"):
        backbone = zsad.load_backbone(spec, config=CONFIG)
        assert backbone.identity["sha256"] == SMALL_SHA
        assert backbone.identity["format"] == "improved-diffusion"


def test_hf_spec_not_in_cache_offline_says_where_to_get_it(caches):
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("hf://owner/missing/model.pt@v1")
    msg = str(info.value)
    url = "https://huggingface.co/owner/missing/resolve/v1/model.pt"
    for part in ("model.pt", "owner/missing", url, "HF_HUB_OFFLINE", "hf download owner/missing model.pt --revision v1", str(caches["hf"])):
        assert part in msg
    no_traceback_chain(info.value)


@pytest.mark.parametrize("spec", ["hf://owner/repo", "hf://owner", "hf://owner/repo/file.pt@"])
def test_malformed_hf_spec(spec):
    with pytest.raises(BackboneLoadError, match=r"hf://OWNER/REPO/FILE"):
        resolve_backbone(spec)


def test_other_urls_are_not_fetched():
    with pytest.raises(BackboneLoadError, match="pass its local path"):
        resolve_backbone("https://example.com/model.pt")


# --- names in the registry -------------------------------------------------------------------------


@pytest.fixture
def test_entry(caches, monkeypatch):
    """A registry entry for the fixture on a (cached) hub repo; sha256 settable per test."""
    pointer = put_in_hf_cache(caches["hf"], "owner/repo", "small.pt", SMALL)

    def register(sha256=None):
        entry = BackboneEntry(format="improved-diffusion", config=str(CONFIG), source="hf://owner/repo/small.pt", sha256=sha256, trained_on="testset")
        monkeypatch.setitem(KNOWN_BACKBONES, "test-small", entry)
        return pointer

    return register


def test_name_resolves_to_the_entry_without_known_hash(test_entry, capsys):
    pointer = test_entry()
    r = resolve_backbone("test-small")
    assert (r.path, r.format, r.config, r.name, r.source, r.sha256, r.trained_on) == (
        pointer, "improved-diffusion", str(CONFIG), "test-small", "hf://owner/repo/small.pt", None, "testset")
    assert resolve_backbone("Test_Small").path == pointer  # conf-file spelling of a name
    backbone = zsad.load_backbone("test-small")  # format and config come from the registry
    assert backbone.identity["sha256"] == SMALL_SHA and backbone.trained_on == "testset"
    assert "sha256" not in capsys.readouterr().out  # already cached: not a first use, nothing printed


def test_name_with_the_right_known_hash(test_entry):
    test_entry(sha256=SMALL_SHA)
    assert resolve_backbone("test-small").sha256 == SMALL_SHA
    # The hf:// source of a registry entry is checked against the entry's hash too, and gets its format/config.
    r = resolve_backbone("hf://owner/repo/small.pt")
    assert (r.name, r.sha256, r.format) == ("test-small", SMALL_SHA, "improved-diffusion")
    assert zsad.load_backbone("test-small").identity["sha256"] == SMALL_SHA


@pytest.mark.parametrize("spec", ["test-small", "hf://owner/repo/small.pt"])
def test_wrong_known_hash_is_refused_and_deleted(test_entry, spec):
    wrong = "0" * 64
    pointer = test_entry(sha256=wrong)
    blob = pointer.resolve()
    with pytest.raises(BackboneLoadError) as info:
        zsad.load_backbone(spec)
    assert SMALL_SHA in str(info.value) and wrong in str(info.value)
    assert not pointer.exists() and not pointer.is_symlink() and not blob.exists()


def test_explicit_format_and_config_win_over_the_registry(test_entry):
    test_entry()
    with pytest.raises(BackboneLoadError, match="zsad train"):
        zsad.load_backbone("test-small", format="zsad")
    with pytest.raises(BackboneLoadError, match="does not match"):
        zsad.load_backbone("test-small", config="diffpath-celeba32")


def test_load_backbone_from_a_config_section_with_a_name(test_entry):
    from omegaconf import OmegaConf

    from zsad.diffusion.loading import load_backbone_from

    test_entry()
    node = OmegaConf.create({"path": "test-small", "format": "auto", "config": None, "use_ema": True})
    assert load_backbone_from(node).identity["sha256"] == SMALL_SHA


def test_diffpath_offline_miss_names_file_repo_and_where_to_put_it(caches):
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("diffpath-celeba32")
    msg = str(info.value)
    for part in ("celeba_ema_0.9999_499999.pt", "ajrheng/diffpath", "https://huggingface.co/ajrheng/diffpath/resolve/main/celeba_ema_0.9999_499999.pt",
                 str(caches["zsad"] / "celeba_ema_0.9999_499999.pt"), "backbone.config=diffpath-celeba32", "HF_HUB_OFFLINE"):
        assert part in msg
    no_traceback_chain(info.value)


def test_a_file_put_into_the_zsad_cache_is_used_without_download(caches):
    caches["zsad"].mkdir()
    placed = caches["zsad"] / "celeba_ema_0.9999_499999.pt"
    placed.write_bytes(b"placeholder")  # resolution only: the real file is 200 MB
    r = resolve_backbone("diffpath-celeba32")
    assert (r.path, r.format, r.config, r.trained_on) == (placed, "improved-diffusion", "diffpath-celeba32", "celeba")


# --- plain URL downloads (openai-imagenet64) ---------------------------------------------------------


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers; `fail_after` bytes then an error."""

    def __init__(self, data: bytes, length: int | None = None, fail_after: int | None = None, error: BaseException | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}
        self.fail_after, self.error = fail_after, error

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise self.error
        return super().read(min(n, self.fail_after - self.tell()) if self.fail_after is not None and n > 0 else n)


def fake_urlopen(monkeypatch, response_or_error):
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        if isinstance(response_or_error, BaseException):
            raise response_or_error
        return response_or_error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_openai_download_failure_names_url_and_cache_and_leaves_nothing(caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = fake_urlopen(monkeypatch, urllib.error.URLError("Name or service not known"))
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("openai-imagenet64")
    msg = str(info.value)
    assert calls == [OPENAI_URL]
    assert OPENAI_URL in msg and str(caches["zsad"] / "imagenet64_uncond_100M_1500K.pt") in msg and "backbone.config=openai-imagenet64" in msg
    assert leftovers(caches["zsad"]) == []
    no_traceback_chain(info.value)


@pytest.mark.parametrize("error", [ConnectionResetError("reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_partial_file(caches, monkeypatch, error):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fake_urlopen(monkeypatch, FakeResponse(b"x" * (3 << 20), fail_after=2 << 20, error=error))
    with pytest.raises(BackboneLoadError if isinstance(error, Exception) else KeyboardInterrupt):
        resolve_backbone("openai-imagenet64")
    assert leftovers(caches["zsad"]) == []


def test_truncated_download_is_refused(caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fake_urlopen(monkeypatch, FakeResponse(b"x" * 1000, length=5000))
    with pytest.raises(BackboneLoadError, match="1000 of 5000 bytes"):
        resolve_backbone("openai-imagenet64")
    assert leftovers(caches["zsad"]) == []


def test_download_lands_atomically_and_prints_its_hash_once(caches, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data = SMALL.read_bytes()
    calls = fake_urlopen(monkeypatch, FakeResponse(data))
    r = resolve_backbone("openai-imagenet64")
    assert r.path == caches["zsad"] / "imagenet64_uncond_100M_1500K.pt" and r.path.read_bytes() == data
    assert (r.format, r.config, r.trained_on, r.source) == ("improved-diffusion", "openai-imagenet64", "imagenet", OPENAI_URL)
    assert leftovers(caches["zsad"]) == ["imagenet64_uncond_100M_1500K.pt"]
    assert SMALL_SHA in capsys.readouterr().out
    resolve_backbone("openai-imagenet64")  # second use: from the cache, no download, no hash line
    assert len(calls) == 1 and SMALL_SHA not in capsys.readouterr().out


def test_download_with_wrong_known_hash_is_deleted(caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    wrong = "f" * 64
    monkeypatch.setitem(KNOWN_BACKBONES, "openai-imagenet64", dataclasses.replace(KNOWN_BACKBONES["openai-imagenet64"], sha256=wrong))
    fake_urlopen(monkeypatch, FakeResponse(SMALL.read_bytes()))
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("openai-imagenet64")
    assert SMALL_SHA in str(info.value) and wrong in str(info.value)
    assert leftovers(caches["zsad"]) == []


def test_offline_mode_does_not_download_urls(caches, monkeypatch):
    calls = fake_urlopen(monkeypatch, AssertionError("urlopen called offline"))
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("openai-imagenet64")
    assert calls == [] and "HF_HUB_OFFLINE" in str(info.value) and OPENAI_URL in str(info.value)


# --- zsad-demo, unknown names, local paths ---------------------------------------------------------


@pytest.mark.parametrize("folder", ["demo", "demo_quick"])
def test_zsad_demo_is_found_under_outputs(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    ckpt = Path("outputs") / folder / "train" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()  # resolution only
    r = resolve_backbone("zsad-demo")
    assert r.path == ckpt and r.format == "zsad" and r.config is None and r.name == "zsad-demo"


def test_zsad_demo_missing_says_run_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneLoadError, match=r"zsad demo") as info:
        resolve_backbone("zsad-demo")
    assert "outputs/demo/train/checkpoints/last.ckpt" in str(info.value) and "outputs/demo_quick/train/checkpoints/last.ckpt" in str(info.value)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BackboneLoadError) as info:
        resolve_backbone("difpath-celeba32")
    msg = str(info.value)
    assert "Did you mean 'diffpath-celeba32'" in msg
    assert all(name in msg for name in KNOWN_BACKBONES)


def test_local_paths_resolve_to_themselves(tmp_path):
    for spec in (SMALL, str(SMALL)):
        r = resolve_backbone(spec)
        assert r.path == Path(spec) and r.format == "auto" and r.config is None and r.name is None and r.sha256 is None
    # A file named like a backbone is that file.
    named = tmp_path / "zsad-demo"
    named.touch()
    assert resolve_backbone(named).path == named


def test_missing_local_path_keeps_the_safe_load_error(tmp_path):
    missing = tmp_path / "nope" / "missing.pt"
    assert resolve_backbone(missing).path == missing
    with pytest.raises(BackboneLoadError, match=r"does not exist\. Train one with `zsad train`"):
        zsad.load_backbone(missing)

