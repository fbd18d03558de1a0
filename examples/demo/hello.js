// The node half of the `hello` service in examples/demo.sh.
// A plain `http` server: it knows nothing about the mesh.
//   GET /      200 "hello from node", after DELAY_MS (a slower instance,
//              so the balancer has something to prefer)
//   GET /fail  500 "node: failing on purpose" (for the breaker step)
// Usage: node hello.js PORT [DELAY_MS]
"use strict";
const http = require("http");

const port = Number(process.argv[2] || 18082);
const delayMs = Number(process.argv[3] || 0);
http
  .createServer((req, res) => {
    console.error(`node app: ${req.method} ${req.url}`);
    if (req.url.startsWith("/fail")) {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end("node: failing on purpose\n");
      return;
    }
    setTimeout(() => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("hello from node\n");
    }, delayMs);
  })
  .listen(port, "127.0.0.1");
