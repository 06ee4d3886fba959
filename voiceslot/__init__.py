"""voiceslot: the shared library of the allocator and synthesizer services.

Lower layers first: ``errors`` and ``text`` (pure), ``config``, ``logs``, ``audio``,
``storage``, ``providers``, ``db``, ``rpc`` (gRPC plumbing). The services
(``allocator_svc``, ``synth_svc``) and the CLI sit above and are never imported from here.
"""

__version__ = "0.1.0"
