"""Every hook is exercised by a test plugin (as Datasette's tests check): a toy plugin
implements each hookspec, and what each implementation registers is reachable."""

from __future__ import annotations

import inspect
import types

import typer
from typer.testing import CliRunner

from polycap import hookspecs
from polycap.builtin.formats import JsonLines
from polycap.builtin.mappers import BuiltinMapper
from polycap.hookspecs import hookimpl
from polycap.language import LanguagePack
from polycap.plugins import PluginHost
from polycap.retrieval.backends import NumpyBackend

TOY_LANGUAGE = LanguagePack(code="xx", name="Toy", default_lm="toy/lm")


def _load_toy_encoder(model: str, pretrained: str | None, device: str = "cpu") -> None:
    return None


class _ToyMetric:
    name = "toy-metric"
    columns = ("TOY",)
    lower_is_better = False


@hookimpl
def register_languages(register):
    register("xx", TOY_LANGUAGE)


@hookimpl
def register_encoders(register):
    register("toy-encoder", _load_toy_encoder)


@hookimpl
def register_mappers(register):
    register("toy-mapper", BuiltinMapper("MLPMapper"))


@hookimpl
def register_metrics(register):
    register("toy-metric", _ToyMetric())


@hookimpl
def register_caption_formats(register):
    register("toy-format", JsonLines())


@hookimpl
def register_datasets(register):
    register("toy-format-old-hook", JsonLines())


@hookimpl
def register_index_backends(register):
    register("toy-index", NumpyBackend())


@hookimpl
def register_commands(app):
    @app.command("toy-hello")
    def toy_hello() -> None:
        print("hello from the toy plugin")


TOY_PLUGIN = types.SimpleNamespace(
    **{name: value for name, value in dict(globals()).items() if name.startswith("register_")}
)
# hook -> (registry attribute, name the toy registers); None: checked on its own below
REACHES = {
    "register_languages": ("languages", "xx"),
    "register_encoders": ("encoders", "toy-encoder"),
    "register_mappers": ("mappers", "toy-mapper"),
    "register_metrics": ("metrics", "toy-metric"),
    "register_caption_formats": ("caption_formats", "toy-format"),
    "register_datasets": ("caption_formats", "toy-format-old-hook"),
    "register_index_backends": ("index_backends", "toy-index"),
    "register_commands": None,
}


def hook_names() -> set[str]:
    return {
        name
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, "polycap_spec")
    }


def test_the_toy_plugin_implements_every_hook() -> None:
    implemented = {name for name in vars(TOY_PLUGIN) if name.startswith("register_")}
    assert implemented == hook_names(), "add the new hook to the toy plugin and to REACHES"
    assert set(REACHES) == hook_names()


def test_every_registering_hook_reaches_its_registry() -> None:
    host = PluginHost(load_entry_points=False)
    host.add_plugin(TOY_PLUGIN, "toy")
    assert host.infos["toy"].error is None
    assert host.infos["toy"].hooks == sorted(hook_names())
    for hook, target in REACHES.items():
        if target is None:
            continue
        attribute, name = target
        registry = getattr(host.registries, attribute)
        assert name in registry and registry.source(name) == "toy", hook


def test_register_commands_adds_a_working_command() -> None:
    host = PluginHost(load_entry_points=False)
    host.add_plugin(TOY_PLUGIN, "toy")
    app = typer.Typer()

    @app.command("noop")
    def noop() -> None:
        """A second command, so Typer keeps subcommand names."""

    host.register_commands(app)
    result = CliRunner().invoke(app, ["toy-hello"])
    assert result.exit_code == 0 and "hello from the toy plugin" in result.output
