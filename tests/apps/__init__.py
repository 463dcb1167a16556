"""Runner modules for the end-to-end tests, importable by worker processes as ``tests.apps.*``.

Workers are forkserver children: they find a runner by its module name, so
every runner here is a module-level function, never a closure or a lambda.
"""
