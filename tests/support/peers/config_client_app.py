"""An app using a third-party Spring Cloud Config client, unmodified
(PyPI config-client 1.5.0), pointed at its sidecar. It fetches its
config at start, and again when POSTed /refresh (Spring's
/actuator/refresh): the sidecar's --config-reload-url.

    python3 config_client_app.py PORT ADDRESS APP PROFILE

GET /greeting -> greeting.text, /password -> db.password.
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from config import ConfigClient

port, address, app, profile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
client = ConfigClient(address=address, app_name=app, profile=profile, fail_fast=False)
client.get_config()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        key = {"/greeting": "greeting.text", "/password": "db.password"}.get(self.path)
        found = client.get(key) if key else None
        body = ("" if found is None else str(found)).encode()
        self.send_response(200 if found is not None else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/refresh":
            self.send_response(404)
            self.end_headers()
            return
        client.get_config()
        print("refreshed", client.get("greeting.text"), flush=True)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
