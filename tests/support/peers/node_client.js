#!/usr/bin/env node
// An unmodified node client for the mesh's protocol tests: node's own
// `http` module (HTTP/1.1, default agent), no proxy support involved.
//
// Run: node node_client.js URL
// It sends GET URL, then POST URL with the body "posted by node", and prints
// one JSON line per request:
//   {"method": "GET", "status": 200, "body": "..."}
// (status 0 and "error" when no response came back). Exit status 0 when both
// answered 200, 1 otherwise.
'use strict';

const http = require('node:http');

// Bounds each request, so a stalled mesh fails the check instead of hanging.
const TIMEOUT_MS = 5000;

function request(url, method, body) {
  return new Promise((resolve) => {
    const req = http.request(url, { method, timeout: TIMEOUT_MS }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        method, status: res.statusCode, body: Buffer.concat(chunks).toString(),
      }));
      res.on('error', (e) => resolve({ method, status: 0, error: String(e) }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => resolve({ method, status: 0, error: String(e) }));
    if (body !== undefined) {
      req.setHeader('content-type', 'text/plain');
      req.end(body);
    } else {
      req.end();
    }
  });
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node node_client.js URL');
    process.exit(2);
  }
  let ok = true;
  for (const [method, body] of [['GET', undefined], ['POST', 'posted by node']]) {
    const result = await request(url, method, body);
    console.log(JSON.stringify(result));
    ok = ok && result.status === 200;
  }
  process.exit(ok ? 0 : 1);
}

main();
