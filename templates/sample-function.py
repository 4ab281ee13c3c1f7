"""The sample function: an HTTP server on port 8000 answering every GET with a greeting.

Each answer also counts the visit in the function's key/value store, through its provider
(``http://169.254.169.254:9000`` with the container's ``BISMUTH_AUTH`` token), so the sample
shows the provider at work; if the provider cannot be reached the count reads ``?``.
The deploy passes this file to ``/usr/bin/python3 -c`` in the function's definition
(templates/sample-function.json.j2), so the base image needs nothing else.
"""

import http.server
import os
import urllib.error
import urllib.request

GREETING = "Hello from Bismuth, container {}, visit {}\n"
VISITS = "http://169.254.169.254:9000/kv/v1/visits"


def count_visit() -> str:
    """Read, add one, write back: good enough for a sample (concurrent visits may share one)."""
    auth = {"Authorization": "Bearer " + os.environ.get("BISMUTH_AUTH", "")}
    try:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(VISITS, headers=auth), timeout=2
            ) as got:
                visits = int(got.read()) + 1
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            visits = 1
        store = urllib.request.Request(VISITS, str(visits).encode(), auth, method="POST")
        urllib.request.urlopen(store, timeout=2).close()
    except Exception:  # the sample answers even without its provider
        return "?"
    return str(visits)


class Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        container = os.environ.get("BISMUTH_CONTAINER_ID", "?")
        body = GREETING.format(container, count_visit()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", 8000), Greeter).serve_forever()
