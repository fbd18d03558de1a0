"""An app configured by files, the ConfigMap way: reads application.json
from its config directory at start and again on SIGHUP (nothing else
tells it of a change), and serves what it read.

    python3 config_sighup_app.py PORT CONFIG_DIR PID_FILE

GET /greeting -> greeting.text, /password -> db.password, /reloads -> how
many times it re-read its files. Prints "listening" once serving.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, config_dir, pid_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
state = {"config": {}, "reloads": 0}


def load(*_):
    with open(os.path.join(config_dir, "application.json")) as f:
        state["config"] = json.load(f)
    state["reloads"] += 1
    print("loaded", state["config"].get("greeting", {}).get("text"), flush=True)


def value(path):
    v = state["config"]
    for part in path.split("."):
        v = v.get(part, {}) if isinstance(v, dict) else {}
    return v if isinstance(v, (str, int, float, bool)) else None


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        found = {
            "/greeting": value("greeting.text"),
            "/password": value("db.password"),
            "/reloads": state["reloads"],
        }.get(self.path)
        body = ("" if found is None else str(found)).encode()
        self.send_response(200 if found is not None else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


load()
signal.signal(signal.SIGHUP, load)
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
