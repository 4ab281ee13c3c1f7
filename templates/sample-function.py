"""The sample function: an HTTP server on port 8000 answering every GET with a greeting.

The deploy passes this file to ``/usr/bin/python3 -c`` in the function's definition
(templates/sample-function.json.j2), so the base image needs nothing else.
"""

import http.server
import os

GREETING = "Hello from Bismuth, container {}\n"


class Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = GREETING.format(os.environ.get("BISMUTH_CONTAINER_ID", "?")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", 8000), Greeter).serve_forever()
