"""The built-in plugins: diffpy-diffusion's own formats, forward models and optional commands.

Each module here is a plugin exactly like a third-party one: functions decorated with
:data:`~diffpy_diffusion.hookspecs.hookimpl`, registered by :mod:`diffpy_diffusion.plugins`
under the module's last name component (``diffpy_diffusion.builtins.readers`` -> plugin
``readers``), before the entry-point plugins.

- :mod:`.readers` -- ``register_readers``: the column formats and saved observations;
- :mod:`.simulators` -- ``register_simulators``: ``xrd``, ``pdf``, ``debye``;
- :mod:`.pdf` -- ``pdf_calculator``: the torch G(r) model (answers last, so a plugin such
  as diffpy-diffusion-srreal replaces it);
- :mod:`.commands` -- ``register_commands``: the optional commands ``train`` and ``bench``.

The structure backends are plugins in their own packages (:mod:`diffpy_diffusion.backends.random`,
``.templates``, ``.diffusion``).  Modules here import nothing heavy at import time: the
hooks import what they register, so ``diffpy-diffuse --help`` stays fast.
"""
