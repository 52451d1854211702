"""The command line: ``unrealnas <verb> [args] [overrides...]``; one module per group of verbs.

:mod:`.main` holds the verb table and the error handling every verb shares; :mod:`.multirun` runs a
verb over a Hydra sweep; :mod:`.help` builds ``unrealnas <verb> --help`` from the schema.
"""
