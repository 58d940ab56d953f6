"""Every CLI command that takes a learner, model, version or alias name refuses names that would leave the store.

``../..``, ``/etc``, ``a/../../b`` and a plain name whose directory is a symlink out of the store, in every
name position of ``learners list|show|rollback`` and ``models list|show|register|compose|promote|rollback|
alias|route|diff``: exit code 2, ONE line of output, no traceback, and not one file written or changed
anywhere under the test's directory (nor in /etc). The broker is a closed port on purpose: a refused name
must never get as far as the broker.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.demo import FEATURE_NAMES
from models.registry import ModelRegistry
from models.signing import load_or_create_key
from models.train_demo import train_demo_model
from online_learning.snapshots import SnapshotStore, dumps_state
from online_learning.specs import get_spec
from streams.cli.main import app

SYMLINK = "evil"  # a plain name whose store directory is a symlink to a directory outside the store
BAD = ["../..", "/etc", "a/../../b", SYMLINK]
SPEC = '{"kind": "weighted_average", "parts": [{"model": "demo-risk", "version": "1"}, ' \
       '{"model": "demo-risk", "version": "2"}]}'


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A registry (demo-risk 1 = champion, 2) and a learner store (logreg v1, v2), both signed with one key file,
    and outside the stores a model version and a snapshot that symlinks in the stores point at."""
    root = tmp_path_factory.mktemp("deployment")
    state, outside = root / "state", root / "outside"
    key_file = state / "signing-key"
    key = load_or_create_key(key_file, create=True)
    for version, seed in [("1", 7), ("2", 8)]:
        train_demo_model(root / "src" / version, seed=seed, n=1500, version=version)
    registry = ModelRegistry(state / "registry", FEATURE_NAMES, key=key)
    registry.register(root / "src" / "1")
    registry.register(root / "src" / "2")
    store = SnapshotStore(state / "snapshots", "logreg", key)
    for v in (1, 2):
        store.write(dumps_state({"model": get_spec("logreg").build()}), version=v, parent=v - 1 or None,
                    kind="learned", worker="test", feature_names=list(FEATURE_NAMES), classes=["legit", "fraud"])
    # outside the stores: copies an attacker controls, reached only through symlinks
    shutil.copytree(registry.root / "models" / "demo-risk" / "2", outside / "model")
    shutil.copytree(store.dir, outside / "snapshots" / "logreg")
    (registry.root / "models" / SYMLINK).symlink_to(outside / "model")
    (registry.root / "models" / "demo-risk" / SYMLINK).symlink_to(outside / "model")
    (store.root / SYMLINK).symlink_to(outside / "snapshots" / "logreg")
    (store.dir / "v000009").symlink_to(outside / "snapshots" / "logreg" / "v000002")
    events = root / "events.jsonl"
    events.write_text("")
    river = root / "river" / "v000001"
    shutil.copytree(store.dir / "v000001", river)
    env = {"STREAMSCORE_STATE_DIR": str(state), "STREAMSCORE_SIGNING_KEY_FILE": str(key_file),
           "STREAMSCORE_BROKER": f"kafka://127.0.0.1:{closed_port()}",
           "STREAMSCORE_REGISTRY_FEATURES": json.dumps(list(FEATURE_NAMES)), "STREAMSCORE_REGISTRY_MODEL": "demo-risk",
           "STREAMSCORE_LEARNER": "", "COLUMNS": "80"}
    return {"root": root, "env": env, "events": str(events), "river": str(river)}


def commands(d: dict) -> list[tuple[str, list[str], str]]:
    """(command, argv template with {} for the name, which name) for every name position of every command."""
    route = '{"policy": "single", "model": "{}"}'  # (filled by str.replace, not str.format)
    versioned = '{"policy": "single", "model": "demo-risk", "version": "{}"}'
    return [
        ("learners list", ["learners", "list", "--learner", "{}"], "learner"),
        ("learners show", ["learners", "show", "1", "--learner", "{}"], "learner"),
        ("learners show", ["learners", "show", "{}", "--learner", "logreg"], "version"),
        ("learners rollback", ["learners", "rollback", "1", "--learner", "{}"], "learner"),
        ("learners rollback", ["learners", "rollback", "{}", "--learner", "logreg"], "version"),
        ("models list", ["models", "list", "{}"], "model"),
        ("models show", ["models", "show", "{}"], "model"),
        ("models show", ["models", "show", "demo-risk", "{}"], "version"),
        ("models register", ["models", "register", d["river"], "--name", "{}", "--version", "r1"], "model"),
        ("models register", ["models", "register", d["river"], "--name", "demo-risk", "--version", "{}"], "version"),
        ("models register", ["models", "register", d["river"], "--version", "r1", "--alias", "{}"], "alias"),
        ("models compose", ["models", "compose", "{}", "blend", SPEC], "model"),
        ("models compose", ["models", "compose", "demo-risk", "{}", SPEC], "version"),
        ("models compose", ["models", "compose", "demo-risk", "blend", SPEC.replace('"1"', '"{}"')], "part"),
        ("models promote", ["models", "promote", "{}", "2"], "model"),
        ("models promote", ["models", "promote", "demo-risk", "{}"], "version"),
        ("models promote", ["models", "promote", "demo-risk", "2", "--alias", "{}"], "alias"),
        ("models rollback", ["models", "rollback", "{}"], "model"),
        ("models rollback", ["models", "rollback", "demo-risk", "--to", "{}"], "version"),
        ("models alias", ["models", "alias", "{}", "challenger", "2"], "model"),
        ("models alias", ["models", "alias", "demo-risk", "{}", "2"], "alias"),
        ("models alias", ["models", "alias", "demo-risk", "challenger", "{}"], "version"),
        ("models alias", ["models", "alias", "demo-risk", "{}", "--remove"], "alias"),
        ("models route", ["models", "route", "*", route], "model"),
        ("models route", ["models", "route", "*", versioned], "version"),
        ("models diff", ["models", "diff", "{}", "1", "2", "--data", d["events"]], "model"),
        ("models diff", ["models", "diff", "demo-risk", "{}", "2", "--data", d["events"]], "version"),
    ]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (symlinks not followed) with its size and mtime: any write shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            out[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return out


def symlinked(template: list[str], which: str) -> str:
    """The symlinked name for this position: learner versions are numbers (v000009 is the symlink)."""
    return "9" if template[:1] == ["learners"] and which == "version" else SYMLINK


def test_the_fixture_is_a_working_deployment(deployment):
    """Without this, a refusal below could be the set-up failing rather than the name being refused."""
    runner, env = CliRunner(), deployment["env"]
    # (not `learners list --learner logreg`: it refuses the whole listing because of the v000009 symlink)
    for argv in (["models", "show", "demo-risk", "2"], ["learners", "show", "2", "--learner", "logreg"],
                 ["models", "list", "demo-risk"]):
        result = runner.invoke(app, argv, env=env)
        assert result.exit_code == 0, (argv, result.output)


@pytest.mark.parametrize("bad", BAD)
def test_every_name_position_refuses_names_that_leave_the_store(deployment, bad):
    runner, env, root = CliRunner(), deployment["env"], deployment["root"]
    cases = commands(deployment)
    assert {c for c, _, _ in cases} == {
        "learners list", "learners show", "learners rollback", "models list", "models show", "models register",
        "models compose", "models promote", "models rollback", "models alias", "models route", "models diff"}
    before, etc_before = tree(root), sorted(os.listdir("/etc"))
    failures = []
    for command, template, which in cases:
        name = symlinked(template, which) if bad == SYMLINK else bad
        argv = [part.replace("{}", name) for part in template]
        result = runner.invoke(app, argv, env=env)
        lines = [line for line in result.output.splitlines() if line.strip()]
        ok = (result.exit_code == 2 and len(lines) == 1 and isinstance(result.exception, SystemExit)
              and "Traceback" not in result.output)
        if not ok:
            failures.append(f"{command} ({which}={name!r}): exit {result.exit_code}, output {result.output!r}, "
                            f"exception {result.exception!r}")
    assert not failures, "\n".join(failures)
    assert tree(root) == before, "a refused command wrote or changed a file"
    assert sorted(os.listdir("/etc")) == etc_before
    print(f"{bad!r}: {len(cases)} name positions of 12 commands refused with exit 2 and one line")


@pytest.mark.parametrize("argv", [["worker"], ["models", "list"], ["models", "promote", "demo-risk", "2"],
                                  ["learners", "list", "--learner", "logreg"], ["learners", "rollback", "1"]])
def test_on_kafka_without_a_signing_key_every_command_stops_with_one_line(tmp_path, argv):
    """No key is generated for a real Kafka deployment: worker and CLI say which setting to provide, exit 2."""
    env = {"STREAMSCORE_STATE_DIR": str(tmp_path / "state"), "STREAMSCORE_BROKER": f"kafka://127.0.0.1:{closed_port()}",
           "STREAMSCORE_REGISTRY_MODEL": "demo-risk", "STREAMSCORE_LEARNER": "logreg",
           "STREAMSCORE_REGISTRY_FEATURES": json.dumps(list(FEATURE_NAMES)), "COLUMNS": "80"}
    result = CliRunner().invoke(app, argv, env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "STREAMSCORE_SIGNING_KEY" in lines[0] and "STREAMSCORE_SIGNING_KEY_FILE" in lines[0]
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*signing-key*"))
