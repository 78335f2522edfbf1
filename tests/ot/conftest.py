"""Import ott once with jaxopt's import-time DeprecationWarning silenced.

ott-jax 0.6.0 imports jaxopt, which warns on import; pytest turns warnings into errors. The
proper home for this filter is pyproject's ``filterwarnings``
(``"ignore::DeprecationWarning:jaxopt.*"``); until it is there, importing ott here first keeps
the warning from failing collection of these tests.
"""

import warnings

with warnings.catch_warnings():
  warnings.filterwarnings("ignore", category=DeprecationWarning, module="jaxopt")
  import ott  # noqa: F401
