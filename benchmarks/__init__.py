"""The method's cost, measured: the speed-up of a multirate step (`speedup`), the speed-up
through the Hugging Face and Lightning integrations (`integration_speedup`) and the cost
plan of a paper run (`plan`).
"""

import experiments  # noqa: F401  (its __init__ pins the CPU kernels before torch is imported)
