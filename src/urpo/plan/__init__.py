"""``urpo plan``: memory per rank and step time of a ``urpo fit`` config, computed before anything is loaded.

:mod:`urpo.plan.architecture` reads the model's shapes (config.json, meta device), :mod:`urpo.plan.setup` the run's
settings from the YAML, :mod:`urpo.plan.estimate` does the arithmetic, :mod:`urpo.plan.advice` finds settings that
fit, :mod:`urpo.plan.report` prints the table, and :mod:`urpo.plan.measure` records a real run's peak to check it.
"""
