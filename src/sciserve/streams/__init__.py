"""Alert streams: sources, sinks, alert codecs and a simulated Rubin alert stream.

:mod:`~sciserve.streams.base` defines messages, sources and sinks,
:mod:`~sciserve.streams.schemas` finds Rubin's alert schemas,
:mod:`~sciserve.streams.codecs` turns Rubin, ZTF and JSON alerts into
dictionaries and back, and :mod:`~sciserve.streams.simulate` writes
schema-valid Rubin alerts with labelled light curves.  Their third-party
dependencies come with the ``streams`` extra and are imported only by the
modules that need them.
"""
