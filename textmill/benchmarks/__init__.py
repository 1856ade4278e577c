"""Benchmark question texts bundled for decontamination (see SOURCE.txt; rebuilt by ``_build.py``)."""
