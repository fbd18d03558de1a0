#!/usr/bin/env node
// An HTTP/2 cleartext (h2c, prior knowledge) server for the mesh's protocol
// tests: node's own `http2.createServer`, no TLS, no HTTP/1.1 fallback.
//
// Every request is answered 200 with the body "<name> <method> <path>\n"
// and the header `x-served-by: <name>`; a request body is read and its
// length added as `x-request-bytes`. Clients: `curl --http2-prior-knowledge`,
// `h2load` (h2c by default for http:// URLs).
//
// Run: node h2_server.js --port 8080 [--bind 0.0.0.0] [--name NAME]
// Once listening it prints "listening PORT" on stdout.
'use strict';

const http2 = require('node:http2');
const { parseArgs } = require('node:util');

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    bind: { type: 'string', default: '0.0.0.0' },
    name: { type: 'string', default: 'h2' },
  },
});
if (!args.port) {
  console.error('usage: h2_server.js --port N [--bind ADDR] [--name NAME]');
  process.exit(2);
}

const server = http2.createServer();
server.on('stream', (stream, headers) => {
  let bytes = 0;
  stream.on('data', (chunk) => { bytes += chunk.length; });
  stream.on('end', () => {
    stream.respond({
      ':status': 200,
      'content-type': 'text/plain',
      'x-served-by': args.name,
      'x-request-bytes': String(bytes),
    });
    stream.end(`${args.name} ${headers[':method']} ${headers[':path']}\n`);
  });
  // A client that resets its stream must not bring the server down.
  stream.on('error', () => {});
});
server.on('sessionError', (err) => console.error(`session error: ${err.message}`));
server.listen(Number(args.port), args.bind, () => {
  console.log(`listening ${server.address().port}`);
});
