"""The generated parameter docs and params YAML are current, and say what the configs say."""
from __future__ import annotations

import yaml

from prevla_ros import params_doc
from prevla_ros.runtime.configs import NODE_CONFIGS
from prevla_ros.runtime.settings import settings


def test_generated_files_are_current():
    # A help text, default or parameter changed in a config without `prevla params --write`
    # fails here: the docs and the YAML never drift from the code.
    assert params_doc.stale() == {}, "run `prevla params --write`"


def test_every_parameter_is_documented_with_its_default_and_help():
    doc = params_doc.DOC.read_text()
    assert set(params_doc.DOCUMENTED) > set(NODE_CONFIGS)  # and the real robot's nodes
    for node, cls in params_doc.DOCUMENTED.items():
        section = doc.split(f"## {node}\n", 1)[1].split("\n## ", 1)[0]
        for s in settings(cls).values():
            default = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
            assert f"| `{s.name}` | `{default}` |" in section, (node, s.name)
            assert params_doc._cell(s.help) in section, (node, s.name)


def test_the_supervisor_flags_are_documented_but_are_no_ros_parameters():
    from prevla_ros.runtime.supervisor import SupervisorConfig

    doc = params_doc.DOC.read_text().split("## prevla up --processes (supervisor)\n", 1)[1]
    for s in settings(SupervisorConfig).values():
        assert params_doc._row(s) in doc, s.name
    assert not set(settings(SupervisorConfig)) & set(yaml.safe_load(params_doc.params_yaml()))


def test_yaml_defaults_round_trip_with_their_types():
    values = yaml.safe_load(params_doc.params_yaml())
    for node, cls in params_doc.DOCUMENTED.items():
        got = values[node]["ros__parameters"]
        for s in settings(cls).values():
            assert got[s.name] == s.default and type(got[s.name]) is s.type, (node, s.name)


def test_a_stale_help_text_is_caught(monkeypatch):
    cls = NODE_CONFIGS["verifier_node"]
    real = settings(cls)
    changed = {k: v if k != "threshold" else type(v)(**{**v.__dict__, "help": "stale"})
               for k, v in real.items()}
    monkeypatch.setattr(params_doc, "settings", lambda c: changed if c is cls else settings(c))
    assert set(params_doc.stale()) == {params_doc.DOC, params_doc.PARAMS}


def test_cli_check_exits_1_when_stale_and_0_when_current(monkeypatch, capsys):
    assert params_doc.main([]) == 0
    monkeypatch.setattr(params_doc, "parameters_md", lambda: "# stale\n")
    assert params_doc.main([]) == 1 and "+# stale" in capsys.readouterr().out
