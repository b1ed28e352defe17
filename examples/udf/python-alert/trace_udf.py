"""trace_udf: a tiny, dependency-free client for Trace UDF bundles (Python 3.8+, stdlib only).

Copy this file into your bundle, list it in bundle_manifest.json, and import it::

    import trace_udf

    def handler(invocation):
        res = trace_udf.query("SELECT count(*) AS n FROM dataset",
                              dataset_uuid=invocation["inputs"][0]["dataset_uuid"])
        return {"events": [], "note": "saw %d rows" % res["rows"][0][0]}

    trace_udf.run(handler)

Contract (see sdk/README.md): the runner writes the invocation JSON to stdin and reads exactly one
JSON object from stdout. Logs go to stderr. Every platform call is a task-scoped HTTP call
authenticated by the per-attempt capability token (header X-Trace-Task-Capability) and fenced by
{task_id, attempt, lease_token} from the invocation.
"""

import json
import os
import sys
import urllib.error
import urllib.request

CAPABILITY_HEADER = "X-Trace-Task-Capability"
DEFAULT_TIMEOUT_S = 30

__all__ = [
    "TraceTaskError", "read_invocation", "query", "emit", "publish_buffer", "heartbeat",
    "credentials", "complete", "output", "run",
]


class TraceTaskError(Exception):
    """A non-2xx answer from a Trace endpoint: `status` is the HTTP status, `code` the stable code."""

    def __init__(self, message, status, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


_invocation = None
_real_stdout = sys.stdout
_output_written = False


def read_invocation():
    """Reads and parses the invocation from stdin (once; later calls return the same dict)."""
    global _invocation
    if _invocation is None:
        inv = json.loads(sys.stdin.read())
        if not isinstance(inv, dict):
            raise ValueError("invocation is not a JSON object")
        _invocation = inv
    return _invocation


def _env(name):
    v = os.environ.get(name)
    if not v:
        raise RuntimeError("%s is not set; is this running under the Trace UDF runner?" % name)
    return v.rstrip("/")


def _token():
    return os.environ.get("TRACE_TASK_CAPABILITY_TOKEN") or read_invocation().get("capability_token")


# Only the URLs the runner gives us; never proxies from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(base, path, body, timeout=DEFAULT_TIMEOUT_S):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode("utf-8"),
        method="POST",
        headers={"content-type": "application/json", CAPABILITY_HEADER: _token()},
    )
    try:
        with _opener.open(req, timeout=timeout) as res:
            text = res.read().decode("utf-8")
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        parsed = None
        try:
            parsed = json.loads(e.read().decode("utf-8"))
        except Exception:
            parsed = None
        msg = parsed.get("error") if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) else "HTTP %d" % e.code
        code = parsed.get("code") if isinstance(parsed, dict) else None
        raise TraceTaskError("%s: %s" % (path, msg), e.code, code) from None


def _fence():
    inv = read_invocation()
    return {"task_id": inv["task_id"], "attempt": inv["attempt"], "lease_token": inv["lease_token"]}


def query(sql, dataset_uuid=None, limit=None, dataset_id=None, timeout=DEFAULT_TIMEOUT_S):
    """Runs read-only SQL against a granted dataset (POST ${TRACE_QUERY_URL}/v1/task/query).

    The dataset is the relation `dataset`. Returns {"columns", "rows", "truncated"}.
    """
    inv = read_invocation()
    body = {"task_id": inv["task_id"], "attempt": inv["attempt"], "sql": sql}
    ds = dataset_id if dataset_id is not None else dataset_uuid
    if ds is not None:
        body["dataset_id"] = ds
    if limit is not None:
        body["limit"] = limit
    return _post(_env("TRACE_QUERY_URL"), "/v1/task/query", body, timeout)


def emit(events):
    """Emits upstream events mid-task (POST /v1/task/events)."""
    return _post(_env("TRACE_DISPATCHER_URL"), "/v1/task/events", dict(_fence(), events=events))


def publish_buffer(batch_uri, batch_size_bytes, dedupe_scope, content_type="application/jsonl"):
    """Publishes a buffered batch already written to object storage (POST /v1/task/buffer-publish)."""
    body = dict(_fence(), batch_uri=batch_uri, content_type=content_type,
                batch_size_bytes=batch_size_bytes, dedupe_scope=dedupe_scope)
    return _post(_env("TRACE_DISPATCHER_URL"), "/v1/task/buffer-publish", body)


def heartbeat():
    """Extends the lease (POST /v1/task/heartbeat). Call it periodically in long runs."""
    return _post(_env("TRACE_DISPATCHER_URL"), "/v1/task/heartbeat", _fence())


def credentials():
    """Short-lived, prefix-scoped object-store credentials (POST /v1/task/credentials)."""
    return _post(_env("TRACE_DISPATCHER_URL"), "/v1/task/credentials", _fence())


def complete(status="Completed", **fields):
    """Reports completion yourself (POST /v1/task/complete).

    Optional: by default the runner host completes the task from your output object.
    """
    return _post(_env("TRACE_DISPATCHER_URL"), "/v1/task/complete", dict(_fence(), status=status, **fields))


def output(obj):
    """Writes the one JSON object result to stdout. Call at most once."""
    global _output_written
    if _output_written:
        raise RuntimeError("output() may be called only once")
    if not isinstance(obj, dict):
        raise TypeError("output must be a JSON object (dict)")
    _output_written = True
    _real_stdout.write(json.dumps(obj))
    _real_stdout.flush()


def run(handler):
    """Reads the invocation, calls handler(invocation), writes its return value as the output.

    While the handler runs, sys.stdout points at stderr so stray print() calls cannot corrupt the
    output. An exception is printed to stderr (message only) and the process exits with code 1.
    """
    sys.stdout = sys.stderr
    try:
        inv = read_invocation()
        result = handler(inv)
        output({} if result is None else result)
    except Exception as e:  # noqa: BLE001 - report any failure the same way
        sys.stderr.write("udf failed: %s: %s\n" % (type(e).__name__, e))
        sys.stderr.flush()
        sys.exit(1)
    finally:
        sys.stdout = _real_stdout
