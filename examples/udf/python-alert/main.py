"""Entrypoint: run the evaluation; the platform completes the task from the returned dict."""

import trace_udf
from alert import evaluate

trace_udf.run(evaluate)
