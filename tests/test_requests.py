"""One contract: every numeric option of every command is checked against the job server's own
limits. A value out of range is one `error:` line naming the option and its whole range, before
anything heavy starts; the server refuses the same value with 422; the edge values pass both."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from annotated_types import Ge, Gt, Le, Lt
from dreamsculpt import cli
from dreamsculpt.requests import allowed_range
from dreamsculpt.server.app import create_app
from dreamsculpt.server.settings import ServerSettings
from dreamsculpt.tasks import TASKS
from fastapi.testclient import TestClient
from PIL import Image
from test_cli import error_line

TOKEN = "test-token-0123456789"
COMMANDS = {"generate": ["a red cube", "--prior", "builtin"], "image-to-3d": ["{image}"], "novel-views": ["{image}"]}
#: What an option needs beside it to be valid at all.
NEEDS = {"--text-weight": ["--prompt", "a red cube"]}


def numeric_options() -> list[tuple[str, str, str, type]]:
    """(command, option, dest, int or float) of every numeric option of every task command."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    found = []
    for command in COMMANDS:
        for action in commands[command]._actions:
            if action.option_strings and action.type in (int, float):
                found.append((command, action.option_strings[0], action.dest, action.type))
    return found


OPTIONS = numeric_options()


def field_of(command: str, dest: str) -> tuple[type, tuple[str, ...], dict[type, float]]:
    """(request model, field location, {bound type: value}) behind an option."""
    kind = cli.build_parser().parse_args([command, "x"]).kind
    model, loc = TASKS[kind].request, cli.FIELDS.get(dest, (dest,))
    fields, info = model.model_fields, None
    for part in loc:
        info = fields[part]
        nested = [a for a in getattr(info.annotation, "__args__", (info.annotation,)) if hasattr(a, "model_fields")]
        fields = nested[0].model_fields if nested else {}
    bounds = {type(b): getattr(b, type(b).__name__.lower()) for b in info.metadata if isinstance(b, (Ge, Gt, Le, Lt))}
    return model, loc, bounds


def outside(bounds: dict[type, float], number: type) -> list[float]:
    """Values just outside the range: below its floor, above its ceiling."""
    step = 1 if number is int else 0.5
    values = []
    if Ge in bounds or Gt in bounds:
        values.append(bounds.get(Ge, bounds.get(Gt)) - (step if Ge in bounds else 0))
    if Le in bounds or Lt in bounds:
        values.append(bounds.get(Le, bounds.get(Lt)) + (step if Le in bounds else 0))
    return [number(v) for v in values]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("requests") / "red.png"
    picture = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    picture.paste((200, 20, 20, 255), (16, 16, 48, 48))
    picture.save(path)
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The job server's app in-process: POST /jobs is validated before any job exists."""
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("server"))
    client = TestClient(create_app(None, TOKEN, settings), base_url="http://127.0.0.1")
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


def command_line(command: str, image: str, option: str, value, *extra: str) -> list[str]:
    return [command, *(a.replace("{image}", image) for a in COMMANDS[command]), *NEEDS.get(option, []),
            option, str(value), *extra]


def test_every_numeric_option_has_the_servers_range():
    assert len(OPTIONS) >= 15, OPTIONS
    for command, option, dest, _ in OPTIONS:
        model, loc, bounds = field_of(command, dest)
        assert bounds, f"{command} {option}: the request field {'.'.join(loc)} has no range"
        assert allowed_range(model, loc), (command, option)


@pytest.mark.parametrize("command,option,dest,number", OPTIONS, ids=[f"{c} {o}" for c, o, _, _ in OPTIONS])
def test_out_of_range_is_one_line_naming_the_option_and_refused_by_the_server(command, option, dest, number, image,
                                                                              server, tmp_path, capsys):
    model, loc, bounds = field_of(command, dest)
    kind = model.model_fields["kind"].annotation.__args__[0]
    for value in outside(bounds, number):
        assert cli.main(command_line(command, image, option, value, "--out", str(tmp_path / "out"))) == 1
        captured = capsys.readouterr()
        message = error_line(captured.err)
        assert len(captured.err.strip().splitlines()) == 1
        assert f"{option} must be {allowed_range(model, loc)} (got {value})" in message, message
        assert not (tmp_path / "out").exists()
        body = {"kind": kind, "prompt": "a red cube", "prior": "builtin"} if kind == "text_to_3d" else \
            {"kind": kind, "image": "0" * 64, "prior": "builtin"}
        target = body
        for part in loc[:-1]:
            target = target.setdefault(part, {})
        target[loc[-1]] = value
        response = server.post("/jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        assert ".".join(loc) in response.json()["message"]


@pytest.mark.parametrize("command,option,dest,number", OPTIONS, ids=[f"{c} {o}" for c, o, _, _ in OPTIONS])
def test_the_edges_of_the_range_pass_both(command, option, dest, number, image):
    """The closed ends of each range are accepted by the CLI's request (as by the server's model,
    which is the same)."""
    parser = cli.build_parser()
    _, loc, bounds = field_of(command, dest)
    for edge in (bounds[b] for b in (Ge, Le) if b in bounds):
        args = parser.parse_args(command_line(command, image, option, number(edge)))
        request = cli.request_from_args(args, parser)
        value = request
        for part in loc:
            value = getattr(value, part)
        assert value == edge


def test_a_refused_value_stops_before_torch_is_imported():
    code = ("import sys; from dreamsculpt import cli; "
            "rc = cli.main(['generate', 'a red cube', '--prior', 'builtin', '--steps', '10000000']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert error_line(result.stderr) == "error: --steps must be from 1 to 100000 (got 10000000)."


#: The guidance options of `generate`: (option, request field).
CHOICES = [("--prior", "prior"), ("--score", "score"), ("--t-schedule", "t_schedule")]


@pytest.mark.parametrize("option,field", CHOICES, ids=[o for o, _ in CHOICES])
def test_the_guidance_choices_are_the_servers(option, field, server, capsys):
    """The CLI offers exactly the values the request model accepts; a value outside them is
    refused by both (argparse names the choices, the server says 422 naming the field)."""
    from dreamsculpt.requests import TextTo3DRequest

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    action = next(a for a in sub._actions if option in a.option_strings)
    assert tuple(action.choices) == TextTo3DRequest.model_fields[field].annotation.__args__
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "a red cube", option, "nonsense"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    response = server.post("/jobs", json={"kind": "text_to_3d", "prompt": "a red cube", field: "nonsense"})
    assert response.status_code == 422 and field in response.json()["message"]


@pytest.mark.parametrize("prior", ["mvdream", "builtin", "references"])
def test_perp_neg_off_the_view_prompt_priors_is_refused_alike(prior, server, tmp_path, capsys):
    extra = ["--references", str(tmp_path)] if prior == "references" else []
    assert cli.main(["generate", "a red cube", "--prior", prior, "--perp-neg", *extra,
                     "--out", str(tmp_path / "out")]) == 1
    message = error_line(capsys.readouterr().err)
    assert message.startswith("error: --perp-neg: Perp-Neg works on the view prompts of the sd and if priors"), message
    body = {"kind": "text_to_3d", "prompt": "a red cube", "prior": prior, "perp_neg": True}
    response = server.post("/jobs", json=body | ({"references": str(tmp_path)} if extra else {}))
    assert response.status_code == 422
    assert message.removeprefix("error: --perp-neg: ") in response.json()["message"]
    assert not (tmp_path / "out").exists()


def test_the_new_guidance_options_reach_the_run_config():
    parser = cli.build_parser()
    args = parser.parse_args(["generate", "a cat", "--prior", "if", "--score", "sjc", "--t-schedule", "dreamtime",
                              "--perp-neg"])
    g = cli.request_from_args(args, parser).to_config().guidance
    assert (g.prior, g.model, g.score, g.t_schedule, g.perp_neg) == ("if", "DeepFloyd/IF-I-XL-v1.0", "sjc",
                                                                     "dreamtime", True)
    args = parser.parse_args(["generate", "a cat", "--prior", "mvdream", "--model", "/models/mv.pt"])
    g = cli.request_from_args(args, parser).to_config().guidance
    assert (g.model, g.score, g.t_schedule, g.perp_neg) == ("/models/mv.pt", "sds", "random", False)
