"""Prefect flows over textmill's core stages (the Prefect twin of `assets/`).

`flows.stages` has one flow per stage, `flows.pipeline` the crawl and whole-pipeline flows,
`flows.serve` a long-running process that serves them with a schedule. Importing this package
routes the core's `logging` output (logger `textmill`) into Prefect's run logs.
"""

import os

# before Prefect configures logging in this process (read again by flows._logs if it already has)
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "textmill")
# the core also logs outside flow runs (a direct stage call in the same process): those records
# belong to the process's own logs, not the Prefect API, so no warning for each of them
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
