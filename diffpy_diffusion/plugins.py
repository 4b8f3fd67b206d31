"""The plugin manager: built-in plugins, entry-point plugins, allow/deny lists.

Everything registered through hooks is collected here: backends, pattern
readers, simulators, the PDF calculator and plugin commands.  diffpy-diffusion's
own formats, models and optional commands are plugins too (:data:`BUILTIN_PLUGINS`),
registered before the entry points exactly as a third-party module is
(``pm.register(module, name=...)``).  Loading is lazy (first call of
:func:`get_plugin_manager`) and fault-tolerant: a plugin (built-in or not) that
fails to import, raises in a registration hook or registers a name that is
already taken is recorded in :func:`plugin_errors` as a one-line message naming
the plugin, ``diffpy-diffuse plugins`` shows it, and the other plugins keep working.

Environment variables
---------------------
``DIFFPY_DIFFUSION_PLUGINS``
    Comma-separated allow-list of plugin names.  When set, only these plugins
    are loaded, plus the core built-ins (:data:`CORE_PLUGINS`: ``readers``,
    ``simulators``, ``pdf``, ``commands``), which the allow-list need not name.
``DIFFPY_DIFFUSION_DISABLE_PLUGINS``
    Comma-separated deny-list of plugin names (any plugin, core built-ins included).

A plugin's name is its entry-point name (third-party) or the last component of
its module name (built-in: ``diffpy_diffusion.backends.random`` -> ``random``,
``diffpy_diffusion.builtins.readers`` -> ``readers``).  The distribution name
(``diffpy-diffusion-example``) and a built-in's full module name are accepted too.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import BackendError, PluginError

#: Built-in plugin modules, registered in this order before the entry points and through
#: the same hooks.  A module that fails to import is a plugin error like any other.
BUILTIN_PLUGINS: list[str] = [
    "diffpy_diffusion.builtins.readers",
    "diffpy_diffusion.builtins.simulators",
    "diffpy_diffusion.builtins.pdf",
    "diffpy_diffusion.builtins.commands",
    "diffpy_diffusion.backends.random",
    "diffpy_diffusion.backends.templates",
    "diffpy_diffusion.backends.diffusion",
]
#: Built-ins loaded even when an allow-list does not name them: without them no pattern file
#: could be read and nothing simulated.  The deny-list still removes them.
CORE_PLUGINS = frozenset({"readers", "simulators", "pdf", "commands"})

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
    commands: dict = field(default_factory=dict)  # command name -> plugin that added it


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
        allow_here = allow | {short} if allow is not None and short in CORE_PLUGINS else allow
        if not _selected({short, modname}, allow_here, deny):
            continue
        try:
            mod = importlib.import_module(modname)
            pm.register(mod, name=short)
        except Exception as exc:  # recorded and shown; the other plugins keep working
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
        "plugin_module": _state_().plugin_info.get(reg.plugin, {}).get("module", "?"),
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
        One dict per backend with ``name``, ``plugin``, ``plugin_module``,
        ``plugin_version``, ``version``, ``capabilities`` (sorted list), ``description`` and
        ``error`` (``None``, or why the factory could not be built).
    """
    regs = _backends(_state_())
    return [_describe(r, instantiate) for _, r in sorted(regs.items())]


def get_readers() -> dict[str, Registration]:
    """Registered pattern readers by name; ``Registration.options`` holds ``extensions``, ``kind`` and ``accepts``."""
    return dict(_readers(_state_()))


def is_builtin(plugin: str) -> bool:
    """True when ``plugin`` (a plugin name) is one of :data:`BUILTIN_PLUGINS`."""
    return bool(_state_().plugin_info.get(plugin, {}).get("builtin"))


def reader_for(suffix: str) -> Registration | None:
    """The reader registered for the file extension ``suffix`` (``".xy"``), or ``None``.

    A third-party reader takes precedence over a built-in one for the same extension
    (plugins are meant to override); among third-party readers the first plugin in
    entry-point name order wins.
    """
    suffix = suffix.lower()
    regs = [r for r in _readers(_state_()).values()
            if suffix in {str(e).lower() for e in r.options.get("extensions", ())}]
    regs.sort(key=lambda r: is_builtin(r.plugin))  # stable: registration order within each group
    return regs[0] if regs else None


def get_simulators() -> dict[str, Registration]:
    """Registered simulators by name (``Registration.obj`` is the callable)."""
    return dict(_simulators(_state_()))


def get_pdf_calculator(kind: str = "pdf"):
    """The PDF calculator for ``kind`` (``"pdf"`` or ``"debye"``): the first non-``None`` hook answer.

    Third-party answers come first (the built-in :mod:`diffpy_diffusion.builtins.pdf` is
    ``trylast``), so with diffpy-diffusion-srreal installed this is srreal's calculator, else
    the built-in torch one for ``"pdf"``.  ``None`` when nobody answers (``"debye"`` without a
    plugin) or the hook raised (recorded in :func:`plugin_errors`).
    """
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


def implementations(hookname: str) -> list[str]:
    """Names of the loaded plugins implementing hook ``hookname``, in the order pluggy calls them."""
    hook = getattr(_state_().pm.hook, hookname)
    return [impl.plugin_name for impl in reversed(hook.get_hookimpls())]


def _first_valid(hookname: str, kwargs: dict, check: Callable[[Any], str | None], fallback: str):
    """``firstresult`` with isolation: ``(plugin, answer)`` of the first valid non-None answer, or None.

    An exception or an answer ``check`` rejects (it returns why) is one line, warned and recorded
    in :func:`plugin_errors`, and treated as None.
    """
    import warnings

    st = _state_()
    for impl in reversed(getattr(st.pm.hook, hookname).get_hookimpls()):  # pluggy's call order
        try:
            res = impl.function(**{k: kwargs[k] for k in impl.argnames})
            why = None if res is None else check(res)
        except Exception as exc:
            res, why = None, _one_line(exc)
        if why is not None:
            msg = f"plugin {impl.plugin_name!r} failed in {hookname}: {why}; {fallback}"
            st.errors.append(msg)
            warnings.warn(msg, stacklevel=3)
            continue
        if res is not None:
            return impl.plugin_name, res
    return None


def call_rank_candidates(observation, proposals) -> tuple[str, list[int]] | None:
    """Run the ``rank_candidates`` hooks: ``(plugin, permutation)`` of the first valid answer, or None.

    An answer that is not a permutation of ``range(len(proposals))`` is a plugin error (see
    :func:`diffpy_diffusion.hookspecs.rank_candidates`).
    """
    n = len(proposals)

    def check(order) -> str | None:
        try:
            idx = list(order)
        except TypeError:
            return f"returned {type(order).__name__}, not a list of indices"
        if any(isinstance(i, bool) or not hasattr(i, "__index__") for i in idx):
            return "returned non-integer indices"
        if sorted(int(i) for i in idx) != list(range(n)):
            return f"returned {_short(idx)}, not a permutation of the {n} candidate indices 0..{n - 1}"
        return None

    got = _first_valid("rank_candidates", {"observation": observation, "proposals": proposals}, check,
                       "the fit order is kept")
    return None if got is None else (got[0], [int(i) for i in got[1]])


def call_relax_proposals(observation, proposals) -> tuple[str, list] | None:
    """Run the ``relax_proposals`` hooks: ``(plugin, new proposals)`` of the first valid answer, or None.

    An answer with another number of proposals, a non-Proposal, or a changed composition is a
    plugin error (see :func:`diffpy_diffusion.hookspecs.relax_proposals`).
    """
    from .types import Proposal

    def check(new) -> str | None:
        try:
            new = list(new)
        except TypeError:
            return f"returned {type(new).__name__}, not a list of proposals"
        if len(new) != len(proposals):
            return f"returned {len(new)} proposals for {len(proposals)}"
        for i, (p, q) in enumerate(zip(proposals, new), 1):
            if not isinstance(q, Proposal):
                return f"proposal {i} is a {type(q).__name__}, not a Proposal"
            if q.structure.composition != p.structure.composition:
                return (f"proposal {i} changed composition ({p.structure.composition.formula} -> "
                        f"{q.structure.composition.formula})")
        return None

    got = _first_valid("relax_proposals", {"observation": observation, "proposals": proposals}, check,
                       "the proposals are screened unrelaxed")
    return None if got is None else (got[0], list(got[1]))


def _short(values, k: int = 8) -> str:
    vals = list(values)
    return "[" + ", ".join(map(repr, vals[:k])) + (", ..." if len(vals) > k else "") + "]"


def notify_recipe_seeded(recipe, proposal) -> None:
    """Run the ``recipe_seeded`` hooks (errors are recorded, not raised)."""
    st = _state_()
    for impl in st.pm.hook.recipe_seeded.get_hookimpls():
        try:
            impl.function(recipe=recipe, proposal=proposal)
        except Exception as exc:
            st.errors.append(f"plugin {impl.plugin_name!r} failed in recipe_seeded: {_one_line(exc)}")


def add_plugin_commands(cli) -> list[str]:
    """Run ``register_commands`` hooks against the click group ``cli``; returns error lines.

    Plugins run in registration order (built-ins first).  A command that is already there
    (the core commands, or one an earlier plugin added) cannot be replaced: the attempt is
    reported and the first command kept.
    """
    st = _state_()
    errs = []
    for name in getattr(cli, "commands", {}):
        st.commands.setdefault(name, None)  # the group's own commands
    for impl in st.pm.hook.register_commands.get_hookimpls():
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            errs.append(f"plugin {impl.plugin_name!r} failed in register_commands: {_one_line(exc)}")
        for name, cmd in before.items():
            if cli.commands.get(name) is not cmd:
                cli.commands[name] = cmd
                owner = st.commands.get(name)
                what = ("built-in command" if owner is None or is_builtin(owner)
                        else f"command of plugin {owner!r}")
                errs.append(f"plugin {impl.plugin_name!r} tried to replace {what} {name!r}; ignored")
        for name, cmd in cli.commands.items():
            if name not in before:
                st.commands[name] = impl.plugin_name
                cmd.diffpy_diffusion_plugin = impl.plugin_name  # survives reset(), for list_plugins(group)
    st.errors.extend(errs)
    return errs


def list_plugins(group=None) -> list[dict]:
    """Describe every loaded plugin and what it contributes (``diffpy-diffuse plugins``).

    Parameters
    ----------
    group : click.Group, optional
        The command group plugin commands were added to; its commands name their plugin
        (otherwise the commands added since the last :func:`reset` are listed).

    Returns
    -------
    list of dict
        In load order (built-ins first), one dict per plugin: ``name``, ``module``,
        ``version``, ``dist``, ``builtin``, ``hooks`` (names of the hooks it implements),
        ``backends``, ``readers`` (``"name (.ext .ext)"``), ``simulators`` and ``commands``
        (names it registered; commands only once the CLI has loaded them).
    """
    st = _state_()
    owners = dict(st.commands)
    if group is not None:
        owners.update({n: getattr(c, "diffpy_diffusion_plugin", None) for n, c in group.commands.items()})
    backends, readers, simulators = _backends(st), _readers(st), _simulators(st)
    out = []
    for name, info in st.plugin_info.items():
        plugin = st.pm.get_plugin(name)
        hooks = sorted(h.name for h in (st.pm.get_hookcallers(plugin) or [])) if plugin is not None else []
        out.append({
            "name": name, **info, "hooks": hooks,
            "backends": sorted(r.name for r in backends.values() if r.plugin == name),
            "readers": [f"{r.name} ({' '.join(r.options.get('extensions', ()))})"
                        for r in readers.values() if r.plugin == name],
            "simulators": sorted(r.name for r in simulators.values() if r.plugin == name),
            "commands": sorted(c for c, p in owners.items() if p == name),
        })
    return out
