"""Hook specifications: the plugin author's manual.

diffpy-diffusion is extended with `pluggy <https://pluggy.readthedocs.io>`_
hooks under the project name ``"diffpy_diffusion"``.  Everything the project
ships is itself a plugin registered through exactly these hooks
(:data:`diffpy_diffusion.plugins.BUILTIN_PLUGINS`, listed by ``diffpy-diffuse
plugins``):

- ``readers`` (``diffpy_diffusion.builtins.readers``): :func:`register_readers`;
- ``simulators`` (``diffpy_diffusion.builtins.simulators``): :func:`register_simulators`;
- ``pdf`` (``diffpy_diffusion.builtins.pdf``): :func:`pdf_calculator`;
- ``commands`` (``diffpy_diffusion.builtins.commands``): :func:`register_commands`;
- ``random``, ``templates``, ``diffusion`` (``diffpy_diffusion.backends.random``,
  ``.templates``, ``.diffusion``): :func:`register_backends`.

:func:`rerank`, :func:`rank_candidates`, :func:`relax_proposals` and
:func:`recipe_seeded` have no built-in implementation; their docstrings say why.
The separately installable ``plugins/diffpy-diffusion-chgnet`` implements the first three
(docs/energy.rst).  The contract test kits in :mod:`diffpy_diffusion.testing`
(:class:`~diffpy_diffusion.testing.BackendContract`,
:class:`~diffpy_diffusion.testing.ReaderContract`,
:class:`~diffpy_diffusion.testing.SimulatorContract`,
:func:`~diffpy_diffusion.testing.check_pdf_calculator`) are run against the
built-ins and the plugins in ``plugins/`` alike.

Writing a plugin
----------------
A plugin is an importable module (or object) with functions decorated by
:data:`hookimpl` whose names match the specifications below.  Implement only
the hooks you need.  Ship it as a separate distribution and declare it in the
entry-point group ``diffpy_diffusion``::

    # pyproject.toml of your package
    [project.entry-points.diffpy_diffusion]
    mysampler = "my_package.plugin"       # name = what users allow/deny

    # my_package/plugin.py
    from diffpy_diffusion import hookimpl

    class MySampler:
        name = "mysampler"
        version = "1.0"
        capabilities = {"composition"}

        def __init__(self, **options): ...
        def sample(self, observation, n, *, seed=None, progress=None):
            ...   # return a list of diffpy_diffusion.Proposal

    @hookimpl
    def register_backends(register):
        register("mysampler", MySampler)

After ``pip install`` the backend shows up in ``diffpy-diffuse backends`` and
is used with ``diffpy-diffuse propose data.xy --composition CdSe --backend
mysampler``.  The template to copy is ``plugins/diffpy-diffusion-example/`` in
the source tree, and :mod:`diffpy_diffusion.testing` is the contract test kit
your tests should run.

Selecting plugins
-----------------
``DIFFPY_DIFFUSION_PLUGINS=a,b`` loads only the plugins named (built-in
plugins are named after their module: ``random``, ``templates``,
``diffusion``...; third-party ones by their entry-point name), plus the core
built-ins ``readers``, ``simulators``, ``pdf`` and ``commands``;
``DIFFPY_DIFFUSION_DISABLE_PLUGINS=a,b`` skips those named, core built-ins included.  A plugin that fails to
import, raises in a hook or registers a name that is already taken is reported
in one line naming it (``diffpy-diffuse backends`` shows these) and the other
plugins keep working.

Conventions that every hook can rely on
---------------------------------------
Units are Å, Å⁻¹, degrees and nm (crystallite size).  Structures are
:class:`pymatgen.core.Structure`; an isotropic displacement parameter, when
present, is the site property ``"uiso"`` in Å².  Patterns travel as
:class:`diffpy_diffusion.types.Observation`, candidates as
:class:`diffpy_diffusion.types.Proposal`.  Hooks must not import heavy
modules (torch) at plugin-import time: import them inside the factory or the
method that needs them, so that ``diffpy-diffuse --help`` stays fast.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "diffpy_diffusion"

#: Marker for hook implementations: decorate your functions with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
#: Marker for the specifications below (used by diffpy-diffusion itself).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_backends(register):
    """Register structure proposers ("backends").

    Parameters
    ----------
    register : callable
        ``register(name, factory)``.  ``name`` is the short, unique, lower-case
        name users pass to ``--backend`` (letters, digits, ``-`` and ``_``;
        ``+`` and ``,`` are reserved for combining backends).  ``factory`` is
        a callable (usually the class) such that ``factory(**options)`` returns
        a backend object with

        - ``name : str`` -- the registered name;
        - ``version : str`` -- version of the backend (model weights count:
          bump it when the weights change);
        - ``capabilities : set[str]`` -- which parts of an observation the
          sampler conditions on, a subset of ``{"composition", "xrd", "pdf",
          "spacegroup"}``.  A backend that only uses the composition still
          works for any pattern; the pipeline screens its proposals against
          the data;
        - ``sample(observation, n, *, seed=None, progress=None) ->
          list[Proposal]`` -- return up to ``n`` candidates.  Every proposal
          must have exactly the observation's composition (an integer
          multiple Z of the formula) and at most ``observation.max_atoms``
          atoms per cell; ``seed`` makes the result reproducible (same seed,
          same structures); ``progress`` is ``None`` or a callable
          ``progress(advance: int)`` to call as candidates are produced.
          Raise :class:`diffpy_diffusion.errors.BackendError` with a message
          for the user when the request cannot be served (e.g. a composition
          that cannot fit in ``max_atoms``).

        When ``version`` and ``capabilities`` are class attributes of the
        factory, ``diffpy-diffuse backends`` reads them without building the
        backend (so listing stays fast even if building loads model weights).
        An optional ``available() -> bool`` class attribute says whether the
        backend can run with what is installed (e.g. trained weights);
        ``--backend auto`` skips a backend that answers ``False``.

    Notes
    -----
    Built in: ``random`` (:mod:`diffpy_diffusion.backends.random`), ``templates``
    (:mod:`diffpy_diffusion.backends.templates`) and ``diffusion``
    (:mod:`diffpy_diffusion.backends.diffusion`), each its own plugin so that
    ``DIFFPY_DIFFUSION_DISABLE_PLUGINS`` can switch them off one by one.

    Returns
    -------
    None
        Call ``register`` once per backend; the return value is ignored.
    """


@hookspec
def register_readers(register):
    """Register readers for pattern file formats.

    Parameters
    ----------
    register : callable
        ``register(name, reader, *, extensions=(), kind=None, accepts=None)``.
        ``reader(path, **options) -> Observation`` reads one file; it receives
        the keyword options of :func:`diffpy_diffusion.io.read_observation`
        (``kind``, ``x_kind``, ``wavelength``, ``radiation``,
        ``composition``), any of which may be ``None`` meaning "not given by
        the user".  ``extensions`` are lower-case suffixes including the dot
        (``(".xrdml",)``); ``kind`` is ``"xrd"`` or ``"pdf"`` when the format
        holds only one of them.  A reader that cannot parse a file should
        raise :class:`diffpy_diffusion.errors.InputFileError` with the path,
        a message saying what was expected, and the 1-based line number.
        ``accepts(path) -> bool``, optional, tells a folder scan
        (``propose-batch DIR``, :func:`diffpy_diffusion.batch.find_patterns`)
        whether a file with one of the ``extensions`` is data at all; without
        it every such file is taken.

    Notes
    -----
    Built in (plugin ``readers``, :mod:`diffpy_diffusion.builtins.readers`):
    ``xy`` for ``.xy .xye .dat .csv .txt .chi .iq .xyd``, ``gr`` for ``.gr
    .fgr .rdf`` and ``observation-json`` for ``.json`` (its ``accepts``
    passes over JSON documents without ``x``/``y``, i.e. our own result
    files).  ``propose-batch DIR`` scans a folder for every extension a
    registered reader claims.  A plugin reader
    registered for an extension that a built-in reader also handles takes
    precedence (plugins are meant to override;
    :func:`diffpy_diffusion.plugins.reader_for`).  Files whose extension no
    reader claims are read as columns of numbers.
    :class:`diffpy_diffusion.testing.ReaderContract` checks a reader.
    """


@hookspec
def register_simulators(register):
    """Register forward models that turn a structure into a pattern.

    Parameters
    ----------
    register : callable
        ``register(name, simulator)``.  ``simulator(structure, x=None,
        **params) -> Observation``, where ``structure`` is a pymatgen
        Structure and ``params`` are the keyword parameters documented for
        :func:`diffpy_diffusion.simulation.simulate` (``wavelength``,
        ``size_nm``, ``radiation``, ...).  A plugin may add e.g.
        ``"neutron-tof"`` or ``"electron"``, which then becomes available to
        ``diffpy-diffuse simulate --kind NAME``.  Names are unique: a name that
        is already registered is reported as a plugin error and ignored.

    Notes
    -----
    Built in (plugin ``simulators``, :mod:`diffpy_diffusion.builtins.simulators`):
    ``"xrd"``, ``"pdf"`` and ``"debye"``, the torch models behind
    :func:`diffpy_diffusion.simulation.simulate`.
    :class:`diffpy_diffusion.testing.SimulatorContract` checks a simulator.
    """


@hookspec(firstresult=True)
def pdf_calculator(kind):
    """Provide a PDF calculator that replaces the built-in torch one.

    Parameters
    ----------
    kind : str
        ``"pdf"`` (periodic, bulk or with ``spdiameter``) or ``"debye"``
        (finite cluster).

    Returns
    -------
    callable or None
        ``calculator(structure, r, **params) -> numpy.ndarray`` returning
        G(r) in Å⁻² on the grid ``r`` (Å) with the srreal/PDFgui parameter
        names (``qmax``, ``qdamp``, ``qbroad``, ``delta1``, ``delta2``,
        ``scale``, ``spdiameter``, ``radiation``), or ``None`` to leave the
        choice to other plugins.  The first non-``None`` answer wins (this is
        how the ``diffpy-diffusion-srreal`` plugin swaps in srreal).  A
        calculator may also have ``profile_generator(name)`` returning a
        complete srfit ProfileGenerator; refinement then uses that instead of
        calling the calculator once per parameter state.

    Notes
    -----
    Built in (plugin ``pdf``, :mod:`diffpy_diffusion.builtins.pdf`): the torch
    model of :mod:`diffpy_diffusion.physics.pdf` for ``kind="pdf"``, marked
    ``trylast`` so any plugin's answer comes first; it answers ``None`` for
    ``"debye"`` (the cluster model is the ``debye`` simulator; nothing refines
    with it).  Refinement asks through
    :func:`diffpy_diffusion.plugins.get_pdf_calculator`.
    """


@hookspec
def rerank(observation, proposals):
    """Add extra figures of merit to the final candidates.

    Called by :func:`diffpy_diffusion.pipeline.propose` once per run, after refinement and
    after the core's ranking (:func:`diffpy_diffusion.pipeline.rank_refined`), with every
    candidate of the final list: the refined ones (their refined structures) and, when
    ``refine_top`` left some unrefined, those too (their screened structures), so every row of
    the table and of ``results.json`` has the scores.  It runs before :func:`rank_candidates`,
    which may use the scores.

    Parameters
    ----------
    observation : Observation
    proposals : list of Proposal
        The final candidates, ranked by the core: refined ones by Rw, then the unrefined
        ones in screening order.

    Returns
    -------
    dict or None
        ``{score_name: list_of_floats}`` with one value per proposal (lower is
        better), stored in each ``proposal.scores[score_name]`` and shown in
        ``results.json``; the order is not changed here (that is :func:`rank_candidates`).
        Return ``None`` to add nothing.  Do not reorder or modify the list itself.
        A wrong number of values, or an exception, is reported as a plugin error (one line,
        :func:`diffpy_diffusion.plugins.plugin_errors`) and that plugin's scores are ignored.

    Notes
    -----
    No built-in implementation: ranking by the fit to the data (screening
    Rwp, then the refined Rw) is the core's own default
    (:func:`diffpy_diffusion.report.score_of`), and this hook only adds
    figures of merit next to it.
    """


@hookspec(firstresult=True)
def rank_candidates(observation, proposals):
    """Reorder the final candidates, e.g. by a rule that combines the fit with an energy.

    Called by :func:`diffpy_diffusion.pipeline.propose` once per run, after refinement,
    after the core's ranking (:func:`diffpy_diffusion.pipeline.rank_refined`: refined
    candidates by Rw, near-ties by fewer parameters, duplicates dropped, then the unrefined
    ones in screening order; when the data cannot decide, as at 1-3 nm, all of them by the
    screening Rwp penalised by the structural parameter count, marked
    ``provenance["ranked_on"] == "parsimony"``) and after the :func:`rerank` hooks have added their scores.
    The order it returns is the order of ``rankNN.*``, the table, ``results.json`` and the
    list ``propose`` returns (and so of the top-k counts of ``diffpy-diffuse evaluate``).
    Not called for the intermediate files written while refinement is still running.

    Parameters
    ----------
    observation : Observation
        The pattern or PDF the candidates were fitted to.
    proposals : list of Proposal
        The final candidates in the core's order; ``scores`` holds ``screen_rwp``, ``rw``
        (refined candidates only) and the :func:`rerank` scores.

    Returns
    -------
    list of int or None
        The new order as a permutation of ``range(len(proposals))``: element ``k`` is the
        index (in ``proposals``) of the candidate that goes to rank ``k + 1``.  ``None`` keeps
        the core's order and lets the next implementation answer; the first non-``None``
        answer wins (``firstresult``).  An implementation may add entries to
        ``proposal.scores`` (they are written after this hook), but must not reorder the list
        in place or change the structures.

        Anything but a permutation (wrong length, a repeated or out-of-range index, not
        integers), or an exception, is a plugin error: one line naming the plugin is issued
        as a warning and recorded in :func:`diffpy_diffusion.plugins.plugin_errors`, the
        answer is ignored (as if ``None``) and, when no other implementation answers, the
        core's fit order is kept.

    Notes
    -----
    No built-in implementation: without a plugin the order is the core's fit order
    (:func:`~diffpy_diffusion.pipeline.rank_refined`), which is the default this hook
    departs from.  The ``chgnet`` plugin ranks a candidate more than 1 eV/atom above the
    best of its composition after the others unless its Rw is better by more than 0.02
    (docs/energy.rst); ``diffpy-diffuse propose --no-energy`` switches that off.
    """


@hookspec(firstresult=True)
def relax_proposals(observation, proposals):
    """Relax the raw proposals (e.g. with an interatomic potential) before screening.

    Called by :func:`diffpy_diffusion.pipeline.propose` only when asked
    (``propose(..., relax=True)``, ``diffpy-diffuse propose --relax``, ``evaluate
    --relax``), once per run, with the raw proposals of every backend, after sampling and
    before screening; screening and refinement then work on what it returns.

    Parameters
    ----------
    observation : Observation
        The pattern or PDF (e.g. to bound the volume change, or to skip a relaxation the
        data will decide anyway).
    proposals : list of Proposal
        The raw proposals, merged over the backends, in sampling order.  Do not modify them.

    Returns
    -------
    list of Proposal or None
        New proposals in the same order, one per input proposal, each with the same
        composition (a proposal that could not be relaxed is returned as it came, ideally
        with a warning); record what was done in ``provenance``.  ``None`` leaves the
        proposals to the next implementation; the first non-``None`` answer wins
        (``firstresult``).

        A wrong number of proposals, an element that is not a
        :class:`~diffpy_diffusion.types.Proposal`, a changed composition, or an exception
        is a plugin error: one line naming the plugin is issued as a warning and recorded
        in :func:`diffpy_diffusion.plugins.plugin_errors`, the answer is ignored (as if
        ``None``) and, when no other implementation answers, the raw proposals are screened.

    Notes
    -----
    No built-in implementation: relaxing needs an interatomic potential, which the core does
    not ship (the ``chgnet`` plugin does: FIRE with CHGNet, cell volume bounded, docs/energy.rst).
    Without an implementation ``--relax`` is an error (one line, exit status 2) rather than a
    silent no-op, and ``propose(relax=True)`` raises
    :class:`~diffpy_diffusion.errors.NotAvailableError`.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``diffpy-diffuse`` command line.

    Parameters
    ----------
    cli : click.Group
        The top-level group; call ``cli.add_command(my_click_command)``.
        Use a name that does not clash with the existing commands (propose,
        propose-batch, simulate, refine, train, evaluate, backends, plugins,
        bench); a clash is reported as a plugin error and the existing command
        is kept.  Reuse the option decorators of :mod:`diffpy_diffusion.cli.options`
        so your options are spelled like the built-in ones.

    Notes
    -----
    Built in (plugin ``commands``, :mod:`diffpy_diffusion.builtins.commands`):
    the optional commands ``train`` and ``bench``.  The core commands are part
    of :mod:`diffpy_diffusion.cli` itself.
    """


@hookspec
def recipe_seeded(recipe, proposal):
    """Be notified after an SrFit recipe was seeded with a proposed structure.

    Called by :func:`diffpy_diffusion.seed_recipe`, e.g. to log provenance
    or add restraints.

    Parameters
    ----------
    recipe : diffpy.srfit.fitbase.FitRecipe
        The recipe, already holding the structure.
    proposal : Proposal
        The proposal that was used.

    Returns
    -------
    None

    Notes
    -----
    No built-in implementation: :func:`diffpy_diffusion.seed_recipe` already
    returns the proposal it used, with its provenance; the hook is for plugins
    that add restraints or log elsewhere.
    """
