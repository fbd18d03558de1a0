// An app that follows its config by long-polling its sidecar:
//   GET /config/APP/PROFILE?version=N&wait=30s  (200: a new version; 304: none yet)
// and serves what it last got.
//
//   node config_longpoll_app.js PORT ADMIN_URL APP PROFILE
//
// GET /greeting -> greeting.text, /version -> the version it holds.
'use strict';
const http = require('http');
const [port, admin, app, profile] = process.argv.slice(2);
let config = null;

function poll() {
  const version = config ? config.version : 0;
  const url = `${admin}/config/${app}/${profile}?version=${version}&wait=30s`;
  http.get(url, (res) => {
    let body = '';
    res.on('data', (c) => { body += c; });
    res.on('end', () => {
      if (res.statusCode === 200) {
        config = JSON.parse(body);
        console.log(`version ${config.version}: ${config.data['greeting.text']}`);
      }
      setImmediate(poll);
    });
  }).on('error', () => setTimeout(poll, 200));
}

http.createServer((req, res) => {
  const answers = {
    '/greeting': config && config.data['greeting.text'],
    '/version': config && String(config.version),
  };
  const found = answers[req.url];
  res.writeHead(found == null ? 404 : 200);
  res.end(found == null ? '' : String(found));
}).listen(Number(port), '127.0.0.1', () => {
  console.log('listening');
  poll();
});
