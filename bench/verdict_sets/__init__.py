"""The labeled sets of bench/verdicts.py, one module per family of stages.

``ENGINE`` is the engine the families' ``curate run`` configs name (``bench/verdicts.py --engine``): the
verdicts must not depend on it.
"""

ENGINE = "local"
