"""The command line: tools load only when they run, and flags mean one thing across tools."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from guetteur import cli

# What the agent on a gateway must not drag in to start: the centre side and technician tools.
NOT_FOR_RUN = (
    "guetteur.centre",
    "guetteur.ops.doctor",
    "guetteur.ops.provision",
    "guetteur.ops.update_cli",
    "guetteur.ops.updates",
    "guetteur.ops.discover",
)


def run_guetteur(*argv: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *python, "-m", "guetteur", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def importtime_modules(*argv: str) -> set[str]:
    """The modules ``python -X importtime -m guetteur ARGV`` lists (on stderr, one a line).
    It lists what import statements load, not what importlib.import_module loads itself."""
    stderr = run_guetteur(*argv, python=("-X", "importtime")).stderr
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", stderr, re.MULTILINE)
    assert found, stderr[-2000:]
    return set(found)


def loaded_modules(*argv: str) -> set[str]:
    """Every module in ``sys.modules`` once ``guetteur ARGV`` has run (in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from guetteur.cli import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(*sorted(sys.modules), sep='\\n', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stderr.split())


def test_run_help_imports_no_centre_or_technician_tool() -> None:
    modules = importtime_modules("run", "--help")
    assert "guetteur.cli" in modules
    loaded = sorted(
        m for m in modules | loaded_modules("run", "--help") if m.startswith(NOT_FOR_RUN)
    )
    assert loaded == [], f"`guetteur run --help` imports {loaded}"


def test_a_tool_loads_only_its_own_module() -> None:
    modules = loaded_modules("centre", "ptz", "--help")
    assert "guetteur.centre.tools.ptz" in modules
    others = {"guetteur.centre.tools.live", "guetteur.centre.receiver", "guetteur.ops.doctor"}
    assert not modules & others, modules & others


def tool_help(*command: str) -> str:
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command, "--help"])
    assert exit_.value.code == 0
    return parser_for(parser, command).format_help()


def parser_for(
    parser: argparse.ArgumentParser, command: tuple[str, ...]
) -> argparse.ArgumentParser:
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


# The centre's tools by the flags they share: straight to the broker, through the centre server
# (an operator's login), or the server's own administration (its centre.yaml).
BROKER_TOOLS = ("receive", "events")
SERVER_TOOLS = ("live", "ptz", "snapshot", "export")
CONFIG_TOOLS = ("serve", "db", "user", "register")
OTHER_TOOLS = ("config", "key", "verify")


def test_every_centre_tool_is_in_one_group() -> None:
    groups = (*BROKER_TOOLS, *SERVER_TOOLS, *CONFIG_TOOLS, *OTHER_TOOLS)
    assert sorted(groups) == sorted(cli.CENTRE_TOOLS)


@pytest.mark.parametrize("tool", BROKER_TOOLS)
def test_centre_broker_tools_share_one_set_of_flags(
    tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tool_help("centre", tool)
    capsys.readouterr()
    usage = text.split("\n\n")[0]
    assert "-b BROKER, --broker BROKER" in text
    # the broker is required, its default is shown, or a config file gives it
    assert "[-b BROKER]" not in usage or "(default mqtt://" in text or "-c CONFIG" in text, text
    for flag in ("--root ROOT", "--ca CA", "--cert CERT", "--key KEY"):
        assert flag in text, f"centre {tool}: no {flag}"
    assert "--ca-file" not in text and "--cert-file" not in text
    if tool != "receive":  # the receiver stores what every gateway sends
        assert "-g GATEWAY, --gateway GATEWAY" in text


@pytest.mark.parametrize("tool", SERVER_TOOLS)
def test_operator_tools_go_through_the_server(
    tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tool_help("centre", tool)
    capsys.readouterr()
    for flag in ("-s SERVER, --server SERVER", "-u USER, --user USER", "--token-file TOKEN_FILE",
                 "-g GATEWAY, --gateway GATEWAY"):  # fmt: skip
        assert flag in text, f"centre {tool}: no {flag}"
    # never the broker itself: commands are signed by the server for the logged-in operator
    assert "--broker" not in text and "--operator" not in text and "--priority" not in text


@pytest.mark.parametrize("tool", CONFIG_TOOLS)
def test_server_administration_reads_centre_yaml(
    tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tool_help("centre", tool)
    capsys.readouterr()
    assert "-c CONFIG, --config CONFIG" in text and "centre.yaml" in text


@pytest.mark.parametrize(
    "command", [("run",), *((t,) for t in cli.TOOLS), *(("centre", t) for t in cli.CENTRE_TOOLS)]
)
def test_dash_c_always_means_config(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    text = tool_help(*command)
    capsys.readouterr()
    for line in text.splitlines():
        if re.match(r"\s+-c\b", line):
            assert re.match(r"\s+-c \S+, --config", line), f"{' '.join(command)}: {line.strip()}"


def test_a_tool_missing_from_the_installation_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="guetteur")
    sub = parser.add_subparsers(dest="command", parser_class=cli.LazyToolParser)
    sub.add_parser("fly", tool_module="guetteur.no_such_tool")
    args = parser.parse_args(["fly", "--to", "moon"])
    assert args.func(args) == 2
    assert "guetteur fly: not available in this installation" in capsys.readouterr().err
