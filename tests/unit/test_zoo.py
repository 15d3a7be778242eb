"""Model zoo: manifest entries, sha256-checked resolution (zoo names and plain paths: manifest or
sidecar records), and the committed default VLA."""
from __future__ import annotations

import json

import pytest
import torch

from prevla_models import zoo
from prevla_models.vla import VLA, VLAConfig, load_checkpoint, save_checkpoint, sha256_file


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = VLA(VLAConfig(image_size=32, vocab=["pick", "bowl"], d_model=32, n_layers=1,
                          n_heads=2, head_layers=1, flow_steps=2))
    path = tmp_path / "trained.pt"
    save_checkpoint(str(path), model, {"step": 5, "train_state": {"step": 5, "big": [0] * 100}})
    return path


def test_register_resolve_and_default(tmp_path, tiny_ckpt):
    root = tmp_path / "zoo"
    entry = zoo.register("vla_a", "vla", str(tiny_ckpt), {"data": "x"}, {"success": 0.5},
                         default=True, root=root)
    assert entry["sha256"] == sha256_file(str(root / "vla_a.pt")) and entry["default"]
    assert entry["signature"]["params"] == VLA(load_checkpoint(str(tiny_ckpt))[0].cfg).num_parameters()
    model, extra = load_checkpoint(str(root / "vla_a.pt"))
    assert "train_state" not in extra and extra["policy_id"] == "vla_a"  # no optimizer state
    zoo.register("vla_b", "vla", str(tiny_ckpt), {"data": "y"}, root=root)
    assert zoo.resolve("", "vla", root) == str(root / "vla_a.pt")  # the default entry
    assert zoo.resolve("zoo:default", "vla", root) == str(root / "vla_a.pt")
    assert zoo.resolve("zoo:vla_b", "vla", root) == str(root / "vla_b.pt")
    assert zoo.resolve(str(tiny_ckpt), "vla", root) == str(tiny_ckpt)  # a path: checked against its sidecar
    zoo.register("vla_b", "vla", str(tiny_ckpt), {"data": "y"}, default=True, root=root)
    models = zoo.load_manifest(root)
    assert [n for n, e in models.items() if e["default"]] == ["vla_b"]  # one default per kind
    assert models["vla_b"]["training"] == {"data": "y"}


def test_tampered_missing_and_unknown_entries_fail_clearly(tmp_path, tiny_ckpt):
    root = tmp_path / "zoo"
    zoo.register("vla_a", "vla", str(tiny_ckpt), {}, default=True, root=root)
    with (root / "vla_a.pt").open("ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="sha256 of .*vla_a.pt"):
        zoo.resolve("", "vla", root)
    (root / "vla_a.pt").unlink()
    with pytest.raises(FileNotFoundError, match="vla_a.pt is missing"):
        zoo.resolve("zoo:vla_a", "vla", root)
    with pytest.raises(FileNotFoundError, match="not in the manifest"):
        zoo.resolve("zoo:nope", "vla", root)
    with pytest.raises(ValueError, match="not a 'verifier'"):
        zoo.resolve("zoo:vla_a", "verifier", root)
    with pytest.raises(FileNotFoundError, match="no default 'vla'"):
        zoo.resolve("", "vla", tmp_path / "empty")
    (root / "manifest.yaml").write_text("models: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        zoo.resolve("", "vla", root)


def test_committed_default_vla_is_intact_and_documented():
    models = zoo.load_manifest()
    defaults = [n for n, e in models.items() if e.get("kind") == "vla" and e.get("default")]
    assert len(defaults) == 1, f"exactly one default VLA expected in {zoo.zoo_dir()}"
    entry = models[defaults[0]]
    path = zoo.resolve("", "vla")  # sha256 checked
    model, extra = load_checkpoint(path)
    assert extra["policy_id"] == defaults[0]
    assert entry["signature"]["params"] == model.num_parameters()
    for key in ("data", "command", "wall_s", "machine"):
        assert key in entry["training"], key
    spatial = entry["metrics"]["closed_loop"]["libero_spatial"]
    assert spatial["episodes"] >= 100 and len(spatial["per_task"]) == 10
    json.dumps(entry)  # plain data only


def test_register_verifier_keeps_threshold_and_one_default_per_kind(tmp_path, tiny_ckpt):
    from prevla_models import verifier as ver

    torch.manual_seed(0)
    model = ver.Verifier(ver.VerifierConfig(image_size=32, vocab=["pick", "bowl"], d_model=32, n_layers=1, n_heads=2))
    model.set_threshold(0.8)
    src = tmp_path / "v.pt"
    ver.save_checkpoint(str(src), model, {"adv_scale": 0.5, "train_state": {"step": 1}})
    root = tmp_path / "zoo"
    zoo.register("vla_a", "vla", str(tiny_ckpt), {}, default=True, root=root)
    entry = zoo.register("ver_a", "verifier", str(src), {"data": "d"}, {"auroc": 0.9}, default=True, root=root)
    assert entry["signature"]["threshold"] == pytest.approx(0.8) and "/ 0.5" in entry["signature"]["outputs"]["advantage"]
    loaded, extra = ver.load_checkpoint(zoo.resolve("", "verifier", root))
    assert loaded.threshold == pytest.approx(0.8) and extra["verifier_id"] == "ver_a" and "train_state" not in extra
    assert zoo.resolve("", "vla", root).endswith("vla_a.pt")  # defaults are per kind
    with pytest.raises(ValueError, match="unsupported kind"):
        zoo.register("x", "critic", str(src), {}, root=root)


def test_committed_default_verifier_is_intact_and_documented():
    from prevla_models.verifier import load_checkpoint as load_verifier

    models = zoo.load_manifest()
    defaults = [n for n, e in models.items() if e.get("kind") == "verifier" and e.get("default")]
    assert len(defaults) == 1, f"exactly one default verifier expected in {zoo.zoo_dir()}"
    entry = models[defaults[0]]
    model, extra = load_verifier(zoo.resolve("", "verifier"))
    assert extra["verifier_id"] == defaults[0] and 0 < model.threshold < 1
    assert entry["signature"]["threshold"] == pytest.approx(model.threshold, abs=1e-6)
    for key in ("data", "command", "wall_s", "machine", "labels"):
        assert key in entry["training"], key
    held_out = entry["metrics"]["held_out"]
    for key in ("auroc_unsafe", "auprc_unsafe", "ece", "spearman_advantage", "win_rate"):
        assert key in held_out, key


def test_a_plain_path_resolves_only_against_a_record(tmp_path, tiny_ckpt):
    from prevla_models.artifacts import UnverifiedModel, sidecar_path, verify

    assert sidecar_path(tiny_ckpt).read_text() == f"{sha256_file(str(tiny_ckpt))}  trained.pt\n"  # save wrote it
    assert zoo.resolve_file(str(tiny_ckpt), "vla").record == f"sidecar {sidecar_path(tiny_ckpt)}"
    with tiny_ckpt.open("r+b") as f:  # flip one byte
        f.seek(tiny_ckpt.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(UnverifiedModel, match="sha256 of .*trained.pt is .* says .*corrupt or replaced"):
        zoo.resolve(str(tiny_ckpt), "vla")
    sidecar_path(tiny_ckpt).unlink()
    with pytest.raises(UnverifiedModel, match="no recorded sha256"):
        zoo.resolve(str(tiny_ckpt), "vla")
    checked = zoo.resolve_file(str(tiny_ckpt), "vla", allow_unverified=True)  # the opt-in
    assert checked.path == str(tiny_ckpt) and not checked.verified and "no recorded sha256" in checked.problem
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        zoo.resolve(str(tmp_path / "absent.pt"), "vla")
    sidecar_path(tiny_ckpt).write_text("not a sha256 line\n")  # a malformed record matches nothing
    with pytest.raises(UnverifiedModel, match="malformed"):
        verify(tiny_ckpt)


def test_zoo_tools_write_sidecars_that_agree_with_the_manifest(tmp_path, tiny_ckpt):
    from prevla_models.artifacts import records, sidecar_path, verify

    root = tmp_path / "zoo"
    entry = zoo.register("vla_a", "vla", str(tiny_ckpt), {}, default=True, root=root)
    assert [d for d, _ in records(root / "vla_a.pt", root)] == [entry["sha256"]] * 2  # sidecar + manifest
    extra = root / "vla_a_copy.pt"
    extra.write_bytes((root / "vla_a.pt").read_bytes())
    zoo.put_entry("vla_copy", {"kind": "vla", "file": extra.name, "sha256": sha256_file(str(extra))}, root)
    assert sidecar_path(extra).is_file() and verify(extra, root=root).verified
    with pytest.raises(ValueError, match="is not that of"):
        zoo.put_entry("vla_bad", {"kind": "vla", "file": extra.name, "sha256": "0" * 64}, root)
    # A sidecar that disagrees with the manifest: every record must match.
    sidecar_path(extra).write_text(f"{'0' * 64}  {extra.name}\n")
    with pytest.raises(ValueError, match="corrupt or replaced"):
        zoo.resolve("zoo:vla_copy", "vla", root)


def test_committed_model_files_have_sidecars_that_agree_with_the_manifest():
    from prevla_models.artifacts import records

    for name, e in zoo.load_manifest().items():
        found = records(zoo.zoo_dir() / e["file"])
        assert {d for d, _ in found} == {e["sha256"]} and any(w.startswith("sidecar") for _, w in found), name
