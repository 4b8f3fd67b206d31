"""The plugin manager: built-in plugins, entry-point plugins, allow/deny lists.

Everything registered through hooks is collected here: backends, pattern
readers, simulators.  Loading is lazy (first call of :func:`get_plugin_manager`)
and fault-tolerant: a plugin that fails to import, raises in a registration
hook or registers a name that is already taken is recorded in
:func:`plugin_errors` as a one-line message naming the plugin, and the other
plugins keep working.

Environment variables
---------------------
``DIFFPY_DIFFUSION_PLUGINS``
    Comma-separated allow-list of plugin names.  When set, only these plugins
    are loaded (built-ins included: name them ``random``, ``templates``...).
``DIFFPY_DIFFUSION_DISABLE_PLUGINS``
    Comma-separated deny-list of plugin names.

A plugin's name is its entry-point name (third-party) or the last component of
its module name (built-in: ``diffpy_diffusion.backends.random`` -> ``random``).
The distribution name (``diffpy-diffusion-example``) is accepted too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import BackendError, PluginError

#: Built-in plugin modules, registered through the same hooks as third-party
#: plugins.  The owner of a backend adds its module here (one-line edit).
#: Modules that do not exist (yet) are skipped silently.
BUILTIN_PLUGINS: list[str] = [
    "diffpy_diffusion.backends.random",
    "diffpy_diffusion.backends.templates",
    "diffpy_diffusion.backends.diffusion",
]

ENTRY_POINT_GROUP = "diffpy_diffusion"
ENV_ALLOW = "DIFFPY_DIFFUSION_PLUGINS"
ENV_DENY = "DIFFPY_DIFFUSION_DISABLE_PLUGINS"

_BACKEND_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass
class Registration:
    """One thing a plugin registered (a backend, a reader or a simulator)."""

    name: str
    obj: Any
    plugin: str
    plugin_version: str
    options: dict = field(default_factory=dict)


@dataclass
class _State:
    pm: pluggy.PluginManager
    plugin_info: dict  # plugin name -> {"module", "version", "dist", "builtin"}
    errors: list
    backends: dict | None = None
    readers: dict | None = None
    simulators: dict | None = None


_lock = threading.RLock()
_state: _State | None = None


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip().lower() for p in raw.replace(";", ",").split(",") if p.strip()}


def _selected(names: set[str], allow: set[str] | None, deny: set[str] | None) -> bool:
    names = {n.lower() for n in names if n}
    if deny and names & deny:
        return False
    if allow is not None and not (names & allow):
        return False
    return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _package_version() -> str:
    from . import __version__

    return __version__


def _load() -> _State:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    info: dict[str, dict] = {}
    errors: list[str] = []
    allow, deny = _env_list(ENV_ALLOW), _env_list(ENV_DENY)

    for modname in BUILTIN_PLUGINS:
        short = modname.rsplit(".", 1)[-1]
        if not _selected({short, modname}, allow, deny):
            continue
        try:
            if importlib.util.find_spec(modname) is None:
                continue
        except (ImportError, ValueError):
            continue
        try:
            mod = importlib.import_module(modname)
            pm.register(mod, name=short)
        except Exception as exc:  # a broken built-in must not break the CLI
            errors.append(f"plugin {short!r} ({modname}) failed to load: {_one_line(exc)}")
            continue
        info[short] = {"module": modname, "version": _package_version(),
                       "dist": "diffpy-diffusion", "builtin": True}

    from importlib.metadata import entry_points

    try:
        eps = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # pragma: no cover - broken metadata
        eps = []
        errors.append(f"could not read entry points: {_one_line(exc)}")
    for ep in sorted(eps, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ""
        dist_version = dist.version if dist is not None else "?"
        if not _selected({ep.name, dist_name}, allow, deny):
            continue
        if ep.name in info:
            errors.append(f"plugin {ep.name!r} from {dist_name or ep.value} ignored: "
                          f"a plugin of that name is already loaded ({info[ep.name]['module']})")
            continue
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as exc:
            errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {_one_line(exc)}")
            continue
        info[ep.name] = {"module": ep.value, "version": dist_version,
                         "dist": dist_name, "builtin": False}
    return _State(pm=pm, plugin_info=info, errors=errors)


def _state_() -> _State:
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


def get_plugin_manager() -> pluggy.PluginManager:
    """The (lazily created) plugin manager with all selected plugins registered."""
    return _state_().pm


def reset() -> None:
    """Forget loaded plugins so the next call re-reads entry points and environment (tests use this)."""
    global _state
    with _lock:
        _state = None


def plugin_errors() -> list[str]:
    """One-line messages for plugins that failed to load or register (collects registrations first)."""
    st = _state_()
    _backends(st)
    _readers(st)
    _simulators(st)
    return list(st.errors)


def plugin_info() -> dict[str, dict]:
    """Loaded plugins: name -> ``{"module", "version", "dist", "builtin"}``."""
    return dict(_state_().plugin_info)


def _collect(st: _State, hookname: str, kind: str, validate: Callable | None = None) -> dict:
    """Call a ``register_*`` hook one implementation at a time, isolating failures."""
    out: dict[str, Registration] = {}
    hook = getattr(st.pm.hook, hookname)
    # get_hookimpls() is in registration order (built-ins first, then entry
    # points by name), so a duplicate error names the newcomer.
    for impl in hook.get_hookimpls():
        pname = impl.plugin_name
        pver = st.plugin_info.get(pname, {}).get("version", "?")

        def register(name, obj, _pname=pname, _pver=pver, **options):
            if not isinstance(name, str) or not name:
                raise PluginError(f"{kind} name must be a non-empty string, got {name!r}")
            if validate is not None:
                validate(name, obj)
            key = name.lower()
            if key in out:
                st.errors.append(f"plugin {_pname!r}: {kind} {name!r} is already registered by "
                                 f"plugin {out[key].plugin!r}; ignored")
                return
            out[key] = Registration(name=name, obj=obj, plugin=_pname, plugin_version=_pver,
                                    options=options)

        try:
            impl.function(register)
        except Exception as exc:
            st.errors.append(f"plugin {pname!r} failed in {hookname}: {_one_line(exc)}")
    return out


def _validate_backend(name: str, factory) -> None:
    if not set(name) <= _BACKEND_NAME_CHARS:
        raise PluginError(f"backend name {name!r} may only use lower-case letters, digits, '-', '_', '.'")
    if not callable(factory):
        raise PluginError(f"backend {name!r}: factory is not callable")


def _backends(st: _State) -> dict:
    with _lock:
        if st.backends is None:
            st.backends = _collect(st, "register_backends", "backend", _validate_backend)
        return st.backends


def _readers(st: _State) -> dict:
    with _lock:
        if st.readers is None:
            st.readers = _collect(st, "register_readers", "reader")
        return st.readers


def _simulators(st: _State) -> dict:
    with _lock:
        if st.simulators is None:
            st.simulators = _collect(st, "register_simulators", "simulator")
        return st.simulators


def backend_names() -> list[str]:
    """Names of all registered backends, sorted."""
    return sorted(r.name for r in _backends(_state_()).values())


def get_backend_registration(name: str) -> Registration:
    """The :class:`Registration` of backend ``name`` (raises BackendError naming the known ones)."""
    regs = _backends(_state_())
    reg = regs.get(str(name).lower())
    if reg is None:
        known = ", ".join(sorted(r.name for r in regs.values())) or "none"
        hint = ""
        errs = [e for e in _state_().errors if repr(str(name).lower()) in e]
        if errs:
            hint = f" ({errs[0]})"
        raise BackendError(f"unknown backend {name!r}; installed backends: {known}{hint}. "
                           "See 'diffpy-diffuse backends'.")
    return reg


def get_backend(name: str, **options):
    """Build backend ``name`` with ``options``; returns the object with ``sample()``.

    Raises
    ------
    BackendError
        Unknown name (the message lists the installed ones) or a factory that
        failed (message names the plugin).
    """
    reg = get_backend_registration(name)
    try:
        backend = reg.obj(**options)
    except BackendError:
        raise
    except TypeError as exc:
        raise BackendError(f"backend {reg.name!r} (plugin {reg.plugin!r}) rejected options "
                           f"{sorted(options)}: {exc}") from exc
    if not hasattr(backend, "sample"):
        raise BackendError(f"backend {reg.name!r} from plugin {reg.plugin!r} has no sample() method")
    return backend


def _describe(reg: Registration, instantiate: bool) -> dict:
    factory = reg.obj
    version = getattr(factory, "version", None)
    caps = getattr(factory, "capabilities", None)
    desc = getattr(factory, "description", None) or (
        (factory.__doc__ or "").strip().splitlines()[0] if getattr(factory, "__doc__", None) else "")
    error = None
    if (not isinstance(version, str) or not isinstance(caps, (set, frozenset, list, tuple))) and instantiate:
        try:
            obj = factory()
            version = getattr(obj, "version", version)
            caps = getattr(obj, "capabilities", caps)
        except Exception as exc:
            error = _one_line(exc)
    return {
        "name": reg.name,
        "plugin": reg.plugin,
        "plugin_version": reg.plugin_version,
        "version": str(version) if version is not None else "?",
        "capabilities": sorted(caps) if isinstance(caps, (set, frozenset, list, tuple)) else [],
        "description": desc,
        "error": error,
    }


def list_backends(*, instantiate: bool = True) -> list[dict]:
    """Describe the registered backends.

    Returns
    -------
    list of dict
        One dict per backend with ``name``, ``plugin``, ``plugin_version``,
        ``version``, ``capabilities`` (sorted list), ``description`` and
        ``error`` (``None``, or why the factory could not be built).
    """
    regs = _backends(_state_())
    return [_describe(r, instantiate) for _, r in sorted(regs.items())]


def get_readers() -> dict[str, Registration]:
    """Registered pattern readers by name; ``Registration.options`` holds ``extensions`` and ``kind``."""
    return dict(_readers(_state_()))


def get_simulators() -> dict[str, Registration]:
    """Registered simulators by name (``Registration.obj`` is the callable)."""
    return dict(_simulators(_state_()))


def get_pdf_calculator(kind: str = "pdf"):
    """The first plugin-provided PDF calculator for ``kind`` or ``None`` (use the built-in torch one)."""
    try:
        return get_plugin_manager().hook.pdf_calculator(kind=kind)
    except Exception as exc:
        _state_().errors.append(f"pdf_calculator hook failed: {_one_line(exc)}")
        return None


def call_rerank(observation, proposals) -> None:
    """Run the ``rerank`` hooks, storing their scores in ``proposal.scores`` (errors are recorded, not raised)."""
    st = _state_()
    for impl in st.pm.hook.rerank.get_hookimpls():
        try:
            res = impl.function(observation=observation, proposals=proposals)
            if not res:
                continue
            for key, values in dict(res).items():
                values = list(values)
                if len(values) != len(proposals):
                    raise PluginError(f"score {key!r} has {len(values)} values for {len(proposals)} proposals")
                for p, v in zip(proposals, values):
                    p.scores[str(key)] = float(v)
        except Exception as exc:
            st.errors.append(f"plugin {impl.plugin_name!r} failed in rerank: {_one_line(exc)}")


def notify_recipe_seeded(recipe, proposal) -> None:
    """Run the ``recipe_seeded`` hooks (errors are recorded, not raised)."""
    st = _state_()
    for impl in st.pm.hook.recipe_seeded.get_hookimpls():
        try:
            impl.function(recipe=recipe, proposal=proposal)
        except Exception as exc:
            st.errors.append(f"plugin {impl.plugin_name!r} failed in recipe_seeded: {_one_line(exc)}")


def add_plugin_commands(cli) -> list[str]:
    """Run ``register_commands`` hooks against the click group ``cli``; returns error lines."""
    st = _state_()
    errs = []
    builtin = set(getattr(cli, "commands", {}))
    for impl in st.pm.hook.register_commands.get_hookimpls():
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            errs.append(f"plugin {impl.plugin_name!r} failed in register_commands: {_one_line(exc)}")
        for name in builtin:
            if cli.commands.get(name) is not before.get(name):
                cli.commands[name] = before[name]
                errs.append(f"plugin {impl.plugin_name!r} tried to replace built-in command {name!r}; ignored")
    st.errors.extend(errs)
    return errs
