"""The embedded demo, in one place: the procedural shapes domain, the demo models' configs and
manifest, the run presets, the domain evaluator, the demo report, the build recipe and their commands.

Design: the package is ranked module by module, not as one layer (`tests/test_layering.py` says the
same). The lower layers need a little of the demo: `core.data.build` serves ``data="shapes"``,
`core.models.registry` makes the ``demo-c2i`` preset from the manifest's configs, and
`core.vapi.config` lists the ``demo-c2i`` run preset. Those three import the demo modules that sit
at their own level, which import nothing above it:

- data / models level: ``shapes`` (the domain), ``configs`` (model configs and manifest reading),
  ``presets`` (the run preset: plain values);
- eval level (may use core.data, core.models, core.vapi, core.eval): ``evaluator``, ``report``,
  ``build``;
- entry point: ``cli`` (``demo build``, ``eval demo``, ``eval diagnose``).

Registration (the demo pushing its domain and presets into the lower registries) was the other
option; it needs something to import the demo first, which is either an import from below (the same
dependency, hidden) or a start-up hook every entry point must remember. Naming the modules' levels
keeps the dependency explicit and checked by a test.

Submodules are imported explicitly (``from core.demo import shapes``); this package imports nothing.
"""
