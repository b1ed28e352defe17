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
{task_id, attempt, lease_token} from the invocation. In the local sandbox there is no network:
calls go over the Unix socket named by TRACE_TASK_SOCKET. Elsewhere (the Lambda runner) they go
to TRACE_DISPATCHER_URL and TRACE_QUERY_URL.
"""

import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request

CAPABILITY_HEADER = "X-Trace-Task-Capability"
DEFAULT_TIMEOUT_S = 30

__all__ = [
    "TraceTaskError", "read_invocation", "query", "emit", "publish_buffer", "heartbeat",
    "credentials", "upload", "complete", "output", "run",
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


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the runner's Unix socket (the sandbox has no network)."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def _via_socket(socket_path, method, path, data, headers, timeout):
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        res = conn.getresponse()
        return res.status, res.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _send(service, path, data, headers, timeout):
    """Returns (status, body text)."""
    socket_path = os.environ.get("TRACE_TASK_SOCKET")
    if socket_path:
        return _via_socket(socket_path, "POST", path, data, headers, timeout)
    base = _env("TRACE_QUERY_URL" if service == "query" else "TRACE_DISPATCHER_URL")
    req = urllib.request.Request(base + path, data=data, method="POST", headers=headers)
    try:
        with _opener.open(req, timeout=timeout) as res:
            return res.status, res.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _post(service, path, body, timeout=DEFAULT_TIMEOUT_S):
    """POSTs to `service` ("dispatcher" or "query"; the socket carries both), parses the answer."""
    headers = {"content-type": "application/json", CAPABILITY_HEADER: _token()}
    status, text = _send(service, path, json.dumps(body).encode("utf-8"), headers, timeout)
    parsed = None
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    if status < 200 or status >= 300:
        msg = parsed.get("error") if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) else "HTTP %d" % status
        code = parsed.get("code") if isinstance(parsed, dict) else None
        raise TraceTaskError("%s: %s" % (path, msg), status, code)
    return parsed


def _fence():
    inv = read_invocation()
    return {"task_id": inv["task_id"], "attempt": inv["attempt"], "lease_token": inv["lease_token"]}


def query(sql, dataset_uuid=None, limit=None, dataset_id=None, timeout=DEFAULT_TIMEOUT_S, datasets=None):
    """Runs read-only SQL against granted datasets (POST /v1/task/query).

    One dataset (dataset_uuid=) is the relation `dataset`; datasets={"blocks": uuid, "logs": uuid}
    binds each granted dataset to its own relation name, for joins. Only while this attempt holds
    its lease. Returns {"columns", "rows", "truncated"}.
    """
    body = dict(_fence(), sql=sql)
    ds = dataset_id if dataset_id is not None else dataset_uuid
    if datasets is not None:
        body["datasets"] = datasets
    elif ds is not None:
        body["dataset_id"] = ds
    if limit is not None:
        body["limit"] = limit
    return _post("query", "/v1/task/query", body, timeout)


def emit(events):
    """Emits upstream events mid-task (POST /v1/task/events)."""
    return _post("dispatcher", "/v1/task/events", dict(_fence(), events=events))


def publish_buffer(batch_uri, batch_size_bytes, dedupe_scope, content_type="application/jsonl"):
    """Publishes a buffered batch already written to object storage (POST /v1/task/buffer-publish)."""
    body = dict(_fence(), batch_uri=batch_uri, content_type=content_type,
                batch_size_bytes=batch_size_bytes, dedupe_scope=dedupe_scope)
    return _post("dispatcher", "/v1/task/buffer-publish", body)


def heartbeat():
    """Extends the lease (POST /v1/task/heartbeat). Call it periodically in long runs."""
    return _post("dispatcher", "/v1/task/heartbeat", _fence())


def credentials(uploads=None):
    """Short-lived, prefix-scoped object-store credentials (POST /v1/task/credentials).

    uploads=[{"name": ..., "area": "buffers"|"scratch"}] also asks for signed uploads into this
    attempt's prefixes.
    """
    body = _fence()
    if uploads:
        body["uploads"] = uploads
    return _post("dispatcher", "/v1/task/credentials", body)


def upload(name, data, area="buffers", timeout=DEFAULT_TIMEOUT_S):
    """Writes data (str or bytes) to name in this attempt's buffers (default) or scratch prefix.

    Goes through a signed upload (the runner's socket in the local sandbox) and returns
    {"uri", "bytes"}; publish "uri" with publish_buffer().
    """
    target = credentials(uploads=[{"name": name, "area": area}])["uploads"][0]
    body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    socket_path = os.environ.get("TRACE_TASK_SOCKET")
    if socket_path and target["url"].startswith("/"):
        headers = dict(target.get("headers") or {}, **{CAPABILITY_HEADER: _token()})
        status, text = _via_socket(socket_path, "PUT", target["url"], body, headers, timeout)
    else:
        req = urllib.request.Request(target["url"], data=body, method=target.get("method", "PUT"), headers=target.get("headers") or {})
        try:
            with _opener.open(req, timeout=timeout) as res:
                status, text = res.status, res.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode("utf-8", "replace")
    if status < 200 or status >= 300:
        parsed = None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        msg = parsed.get("error") if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) else "HTTP %d" % status
        code = parsed.get("code") if isinstance(parsed, dict) else None
        raise TraceTaskError("upload %s: %s" % (name, msg), status, code)
    return {"uri": target["uri"], "bytes": len(body)}


def complete(status="Completed", **fields):
    """Reports completion yourself (POST /v1/task/complete).

    Optional: by default the runner host completes the task from your output object.
    """
    return _post("dispatcher", "/v1/task/complete", dict(_fence(), status=status, **fields))


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
