"""Test-wide setup: single-threaded BLAS (two cores; statsmodels fits thrash when BLAS threads fight)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
