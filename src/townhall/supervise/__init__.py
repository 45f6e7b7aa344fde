"""The process model of ``townhall serve``: a supervisor and the fault domains it runs.

See ``docs/architecture.md`` (processes and fault domains) for the picture.
"""
