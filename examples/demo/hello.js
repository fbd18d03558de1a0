// The node half of the `hello` service in examples/demo.sh.
// A plain `http` server: it knows nothing about the mesh.
// Usage: node hello.js PORT
"use strict";
const http = require("http");

const port = Number(process.argv[2] || 18082);
http
  .createServer((req, res) => {
    console.error(`node app: ${req.method} ${req.url}`);
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("hello from node\n");
  })
  .listen(port, "127.0.0.1");
